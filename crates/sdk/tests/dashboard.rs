//! The embedded engine serves the browser dashboard in-process (feature `dashboard`).

#![cfg(feature = "dashboard")]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use trigger_engine::{Packet, TriggerOptions, TriggerRequest, WorkerManifest};
use trigger_sdk::backend::{Backend, Embedded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_engine_serves_its_dashboard_with_the_runs_in_it() {
    let embedded = Embedded::memory().await.unwrap();
    embedded
        .register_worker(WorkerManifest {
            content_hash: "dash".into(),
            tasks: vec![trigger_engine::TaskManifest::new("shown")],
            ..Default::default()
        })
        .await
        .unwrap();
    let run = embedded
        .trigger(TriggerRequest {
            task: "shown".into(),
            payload: Packet::json(&json!({ "hello": "dashboard" })),
            options: TriggerOptions::default(),
        })
        .await
        .unwrap()
        .run;

    let login = embedded.serve_dashboard("127.0.0.1:0").await.unwrap();
    assert!(login.contains("/dashboard/login?token=tr_dash_"), "{login}");
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let signed_in = client.get(login.parse().unwrap()).await.unwrap();
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .expect("the login link opens a session")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let base = login.split("/dashboard/").next().unwrap();
    let page = hyper::Request::get(format!("{base}/dashboard/dev/runs/{}", run.id))
        .header("cookie", cookie)
        .body(Empty::new())
        .unwrap();
    let response = client.request(page).await.unwrap();
    assert_eq!(response.status(), 200);
    let html = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains(&run.id), "the run's page shows the run");
    assert!(html.contains("shown"), "and its task");
}
