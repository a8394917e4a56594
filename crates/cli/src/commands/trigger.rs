//! `trigger trigger <task>`: triggers a run through the server's API.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::runs::{print_id, url_encode, Connection};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The task id.
    task: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Run options as JSON (Trigger.dev's `options`: delay, ttl, tags, idempotencyKey, …).
    #[arg(long)]
    options: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: Args) -> Result<()> {
    let payload: Value = serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let mut options: Value = match &args.options {
        Some(o) => serde_json::from_str(o).context("--options is not valid JSON")?,
        None => json!({}),
    };
    options["payloadType"] = json!("application/json");
    let body = json!({ "payload": payload.to_string(), "options": options });
    let out = args
        .connection
        .api()?
        .post(&format!("/api/v1/tasks/{}/trigger", url_encode(&args.task)), body)
        .await?;
    print_id(&out, args.connection.json);
    Ok(())
}
