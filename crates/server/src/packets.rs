//! Large payloads and outputs ("packets"). The SDK offloads any value of 128 KB or more: it
//! asks for an upload URL, PUTs the bytes there, and sends the storage path instead of the
//! value (`application/store`). Trigger.dev hands out object-storage URLs; here the server
//! stores the bytes itself and its URLs carry a signature, since the SDK sends no key to
//! them.
//!
//! Files live in a folder beside the SQLite database (or in memory), named by a hash of
//! environment and path so a path can never escape the folder. With several replicas the
//! folder must be shared storage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The largest packet accepted (an output's limit).
pub const MAX_PACKET: usize = 10 * 1024 * 1024;
/// How long a signed URL stays valid.
pub const URL_TTL_MS: i64 = 60 * 60 * 1000;

/// Where packets are kept.
#[derive(Debug)]
pub enum PacketStore {
    Memory(Mutex<HashMap<String, (String, Bytes)>>),
    Dir(PathBuf),
}

impl PacketStore {
    pub fn memory() -> PacketStore {
        PacketStore::Memory(Mutex::new(HashMap::new()))
    }

    fn key(env_id: &str, path: &str) -> String {
        hex::encode(Sha256::digest(format!("{env_id}\0{path}").as_bytes()))
    }

    /// Stores a packet with its content type.
    pub async fn put(
        &self,
        env_id: &str,
        path: &str,
        content_type: &str,
        data: Bytes,
    ) -> std::io::Result<()> {
        let key = Self::key(env_id, path);
        match self {
            PacketStore::Memory(map) => {
                map.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (content_type.to_string(), data));
                Ok(())
            }
            PacketStore::Dir(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                // Write then rename, so a reader never sees half a packet.
                let tmp = dir.join(format!("{key}.tmp"));
                tokio::fs::write(&tmp, &data).await?;
                tokio::fs::write(dir.join(format!("{key}.type")), content_type).await?;
                tokio::fs::rename(&tmp, dir.join(format!("{key}.bin"))).await
            }
        }
    }

    /// A packet and its content type, if stored.
    pub async fn get(&self, env_id: &str, path: &str) -> std::io::Result<Option<(String, Bytes)>> {
        let key = Self::key(env_id, path);
        match self {
            PacketStore::Memory(map) => Ok(map.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()),
            PacketStore::Dir(dir) => match tokio::fs::read(dir.join(format!("{key}.bin"))).await {
                Ok(data) => {
                    let content_type = tokio::fs::read_to_string(dir.join(format!("{key}.type")))
                        .await
                        .unwrap_or_else(|_| "application/json".into());
                    Ok(Some((content_type, Bytes::from(data))))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

/// Signs (method, environment, path, expiry) with the server's secret.
pub(crate) fn signature(secret: &str, method: &str, env_id: &str, path: &str, expires: i64) -> String {
    hex::encode(Sha256::digest(format!("{secret}\0{method}\0{env_id}\0{path}\0{expires}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_store_keeps_bytes_and_type_and_confines_paths() {
        let dir = std::env::temp_dir()
            .join(format!("trigger-packets-{}", trigger_types::ids::random_alphanumeric(12)));
        let store = PacketStore::Dir(dir.clone());
        store.put("env_1", "../../etc/passwd", "text/plain", Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(
            store.get("env_1", "../../etc/passwd").await.unwrap(),
            Some(("text/plain".into(), Bytes::from_static(b"hi")))
        );
        // Another environment's identical path is another packet.
        assert_eq!(store.get("env_2", "../../etc/passwd").await.unwrap(), None);
        // Every file stays inside the folder.
        let mut entries = tokio::fs::read_dir(&dir).await.unwrap();
        while let Some(e) = entries.next_entry().await.unwrap() {
            assert_eq!(e.path().parent(), Some(dir.as_path()));
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        assert_ne!(signature("s", "GET", "env_1", "p", 1), signature("s", "PUT", "env_1", "p", 1));
    }
}
