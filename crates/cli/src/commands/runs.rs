//! `trigger runs`: list, inspect, cancel and replay runs through the server's API.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::config;
use crate::http::Api;

#[derive(clap::Args, Debug)]
pub struct Connection {
    /// Server URL.
    #[arg(long, env = "TRIGGER_API_URL")]
    api_url: Option<String>,
    /// Secret key of the environment.
    #[arg(long, env = "TRIGGER_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Connection {
    pub fn api(&self) -> Result<Api> {
        let (url, key) = config::api(self.api_url.clone(), self.secret_key.clone())?;
        Ok(Api::new(url, key))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List runs, newest first.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only these statuses (comma-separated, e.g. QUEUED,EXECUTING).
        #[arg(long)]
        status: Option<String>,
        /// Only these tasks (comma-separated).
        #[arg(long)]
        task: Option<String>,
        /// Only runs with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Page size (1–100).
        #[arg(long, default_value_t = 25)]
        limit: u32,
    },
    /// Show one run.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a run (and its unfinished children).
    Cancel {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Start a new run with a run's payload and options.
    Replay {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::List { connection, status, task, tag, limit } => {
            let mut query = vec![format!("page%5Bsize%5D={}", limit.clamp(1, 100))];
            for (name, value) in [("status", status), ("taskIdentifier", task), ("tag", tag)] {
                if let Some(v) = value {
                    query.push(format!("filter%5B{name}%5D={}", encode(&v)));
                }
            }
            let page = connection.api()?.get(&format!("/api/v1/runs?{}", query.join("&"))).await?;
            if connection.json {
                println!("{page}");
                return Ok(());
            }
            for run in page["data"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}\t{}\t{}\t{}",
                    text(&run["id"]),
                    text(&run["status"]),
                    text(&run["taskIdentifier"]),
                    text(&run["createdAt"])
                );
            }
        }
        Command::Get { id, connection } => {
            let run = connection.api()?.get(&format!("/api/v3/runs/{}", encode(&id))).await?;
            if connection.json {
                println!("{run}");
            } else {
                println!("{}", serde_json::to_string_pretty(&run)?);
            }
        }
        Command::Cancel { id, connection } => {
            let out =
                connection.api()?.post(&format!("/api/v2/runs/{}/cancel", encode(&id)), Value::Null).await?;
            print_id(&out, connection.json);
        }
        Command::Replay { id, connection } => {
            let out =
                connection.api()?.post(&format!("/api/v1/runs/{}/replay", encode(&id)), Value::Null).await?;
            print_id(&out, connection.json);
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}

pub fn print_id(out: &Value, json: bool) {
    if json {
        println!("{out}");
    } else {
        println!("{}", text(&out["id"]));
    }
}

pub use encode as url_encode;
