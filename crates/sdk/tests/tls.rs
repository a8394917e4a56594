//! `https://` with the `tls` feature: a worker and a backend trigger reach a real server
//! through a TLS terminator with a self-signed certificate made here, trusted through
//! `HttpOptions::root_certificates`; without that trust the handshake is refused.
//! Run with `cargo test -p trigger-sdk --features tls --test tls`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use trigger_sdk::backend::{Backend, Http, HttpOptions, RequestRetry};
use trigger_sdk::{runs, task, RunStatus, TaskError, TriggerOptions, Worker};
use trigger_server::{serve, Database, ServeOptions};

/// Terminates TLS on a free port and passes the bytes to `upstream` (the server's plain
/// HTTP address). Returns the port.
async fn tls_terminator(upstream: String, cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut plain) = TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_reaches_the_server_with_a_trusted_certificate_only() {
    let server =
        serve(ServeOptions { database: Database::Memory, port: 0, ..ServeOptions::default() }).await.unwrap();
    let key = server.bootstrap().dev_key.clone().unwrap();
    let project = server.bootstrap().tenancy.project.external_ref.clone();
    let upstream = server.base_url().trim_start_matches("http://").trim_end_matches('/').to_string();

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let port = tls_terminator(upstream, cert.clone(), private).await;
    let url = format!("https://localhost:{port}");

    // Not trusted: the webpki roots do not know a self-signed certificate.
    let options = HttpOptions { retry: RequestRetry::none(), ..Default::default() };
    let untrusted = Http::with_options(&url, &key, Some(project.clone()), options).unwrap();
    let err = untrusted.list_runs(Default::default(), Default::default()).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let options = HttpOptions { root_certificates: vec![cert.to_vec()], ..Default::default() };
    let backend = Http::with_options(&url, &key, Some(project), options).unwrap();
    let hello = task::<Value, Value>("tls-hello")
        .run(|p, _| async move { Ok::<_, TaskError>(json!({ "hi": p["name"] })) });
    let worker = Worker::builder()
        .backend(backend.clone())
        .task(hello.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    trigger_sdk::configure(backend);
    let handle = hello.trigger(json!({ "name": "tls" }), TriggerOptions::default()).await.unwrap();
    let run =
        tokio::time::timeout(Duration::from_secs(30), runs::poll(&handle.id, Duration::from_millis(50)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.output.unwrap().data.as_deref(), Some(r#"{"hi":"tls"}"#));
    worker.shutdown().await.unwrap();
}
