//! Runs the server until Ctrl-C: `cargo run -p trigger-server --example serve -- [port] [db]`.
//! With no database path the store is in memory. The CLI crate is the real entry point;
//! this is for trying the server (and the official SDK) against it by hand.

use trigger_server::{serve, Database, ServeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=debug".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let port = args.next().map(|p| p.parse()).transpose()?.unwrap_or(3030);
    let database = args.next().map_or(Database::Memory, |p| Database::Sqlite(p.into()));
    let server = serve(ServeOptions { database, port, ..ServeOptions::default() }).await?;
    let b = server.bootstrap();
    println!("listening on {}", server.base_url());
    println!("project ref: {}", b.tenancy.project.external_ref);
    match &b.dev_key {
        Some(key) => println!("TRIGGER_SECRET_KEY={key}"),
        None => println!(
            "dev keys (stored hashed): {:?}; create a new one with the CLI if you lost yours",
            b.dev_key_ids
        ),
    }
    if let Some(pat) = &b.personal_access_token {
        println!("TRIGGER_ACCESS_TOKEN={pat}");
    }
    server.wait().await?;
    Ok(())
}
