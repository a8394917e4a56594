//! The dashboard router in-process: what needs a session, login and CSRF, and the runs list
//! at 10,000 runs.

use std::time::Instant;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;
use trigger_engine::{
    Engine, EngineOptions, EnvironmentType, Packet, QueueManifest, TaskManifest, TriggerOptions,
    TriggerRequest, WorkerManifest,
};
use trigger_storage_sqlite::SqliteStore;

struct Fixture {
    engine: Engine,
    router: Router,
    token: String,
    dev_env: String,
}

async fn fixture() -> Fixture {
    let engine = Engine::start(SqliteStore::memory().unwrap(), EngineOptions::default());
    let tenancy = engine.bootstrap("Default", "Default project").await.unwrap();
    let token = trigger_dashboard::startup_token(&engine).await.unwrap();
    let dev_env = tenancy.environment(EnvironmentType::Development).unwrap().id.clone();
    let mut task = TaskManifest::new("hello");
    task.queue_name = Some("q".into());
    engine
        .register_worker(
            &dev_env,
            WorkerManifest {
                content_hash: "v1".into(),
                tasks: vec![task],
                queues: vec![QueueManifest { name: "q".into(), concurrency_limit: Some(2) }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let router = trigger_dashboard::router(engine.clone(), trigger_dashboard::Options::default());
    Fixture { engine, router, token, dev_env }
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::ACCEPT, "text/html");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(form.to_string())).unwrap()
}

/// Signs in; returns the cookie and the session's CSRF token.
async fn sign_in(f: &Fixture) -> (String, String) {
    let (status, headers, _) =
        send(&f.router, post("/dashboard/login", None, &format!("token={}", f.token))).await;
    assert_eq!(status, StatusCode::OK);
    let set = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set.contains(attr), "{set} has {attr}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let (_, _, page) = send(&f.router, get("/dashboard/dev/runs", Some(&cookie))).await;
    let csrf =
        page.split("<meta name=\"csrf\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn nothing_but_login_and_assets_without_a_session() {
    let f = fixture().await;
    let gets = [
        "/dashboard",
        "/dashboard/dev",
        "/dashboard/dev/runs",
        "/dashboard/dev/runs/run_x",
        "/dashboard/prod/tasks",
        "/dashboard/stg/queues",
        "/dashboard/preview/batches",
        "/dashboard/dev/waitpoints",
        "/dashboard/dev/keys",
    ];
    for path in gets {
        let (status, headers, _) = send(&f.router, get(path, None)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{path}");
        assert!(headers[header::LOCATION].to_str().unwrap().starts_with("/dashboard/login?next="));
    }
    for path in ["/dashboard/dev/live/runs", "/dashboard/dev/live/runs/run_x", "/dashboard/dev/live/env"] {
        assert_eq!(send(&f.router, get(path, None)).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let posts = [
        "/dashboard/logout",
        "/dashboard/dev/runs/run_x/cancel",
        "/dashboard/dev/runs/run_x/replay",
        "/dashboard/dev/runs/run_x/reschedule",
        "/dashboard/dev/tasks/hello/test",
        "/dashboard/dev/queues/pause",
        "/dashboard/dev/waitpoints/waitpoint_x/complete",
        "/dashboard/dev/keys",
        "/dashboard/dev/keys/key_x/revoke",
    ];
    for path in posts {
        assert_eq!(send(&f.router, post(path, None, "csrf=x")).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    // A forged cookie is no session.
    let forged = send(&f.router, get("/dashboard/dev/runs", Some("trigger_dash=guess"))).await;
    assert_eq!(forged.0, StatusCode::SEE_OTHER);
    assert_eq!(send(&f.router, get("/dashboard/login", None)).await.0, StatusCode::OK);
    assert_eq!(send(&f.router, get("/dashboard/assets/app.js", None)).await.0, StatusCode::OK);
    assert_eq!(send(&f.router, get("/dashboard/assets/nope.js", None)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn login_tokens_sessions_and_csrf() {
    let f = fixture().await;
    // Wrong tokens, a secret key (not accepted by default) and a PAT open nothing.
    let (_, dev_key) =
        f.engine.create_api_key(trigger_engine::ApiKeyKind::Secret, Some(&f.dev_env), "k").await.unwrap();
    for bad in ["", "tr_dash_nope", &dev_key] {
        let (status, headers, body) =
            send(&f.router, post("/dashboard/login", None, &format!("token={bad}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(headers.get(header::SET_COOKIE).is_none());
        assert!(body.contains("not valid"));
    }
    // An open redirect is refused: `next` stays on the dashboard.
    let (_, _, body) =
        send(&f.router, get(&format!("/dashboard/login?token={}&next=https://evil.example/", f.token), None))
            .await;
    assert!(body.contains("url=/dashboard\"") && !body.contains("evil"));

    let (cookie, csrf) = sign_in(&f).await;
    let (status, headers, page) = send(&f.router, get("/dashboard/dev/queues", Some(&cookie))).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(page.contains("data-queue=\"q\" data-paused=\"false\""));

    // State changes need the session's CSRF token.
    for form in ["queue=q&paused=true", "queue=q&paused=true&csrf=wrong"] {
        let (status, _, _) = send(&f.router, post("/dashboard/dev/queues/pause", Some(&cookie), form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form}");
    }
    assert!(!f.engine.list_queues(&f.dev_env).await.unwrap()[0].paused, "a refused form changed nothing");
    let form = format!("queue=q&paused=true&csrf={csrf}");
    let (status, _, _) = send(&f.router, post("/dashboard/dev/queues/pause", Some(&cookie), &form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(f.engine.list_queues(&f.dev_env).await.unwrap()[0].paused);

    // Bad input is a clear 422 and changes nothing.
    let form = format!("payload=%7Bnope&csrf={csrf}");
    let (status, _, body) =
        send(&f.router, post("/dashboard/dev/tasks/hello/test", Some(&cookie), &form)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("payload: not valid JSON"));

    // Logging out ends the session.
    let (status, _, _) =
        send(&f.router, post("/dashboard/logout", Some(&cookie), &format!("csrf={csrf}"))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(send(&f.router, get("/dashboard/dev/runs", Some(&cookie))).await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn runs_list_pages_through_ten_thousand_runs() {
    let f = fixture().await;
    let total = 10_000;
    for chunk in 0..(total / 1000) {
        let calls = (0..1000).map(|i| {
            let n = chunk * 1000 + i;
            let engine = f.engine.clone();
            let env = f.dev_env.clone();
            async move {
                let tags = if n % 100 == 0 { vec!["hundred".to_string()] } else { Vec::new() };
                engine
                    .trigger(
                        &env,
                        TriggerRequest {
                            task: "hello".into(),
                            payload: Packet::json(&serde_json::json!({ "n": n })),
                            options: TriggerOptions { tags, ..Default::default() },
                        },
                    )
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(calls).await;
    }
    let (cookie, _) = sign_in(&f).await;

    let started = Instant::now();
    let (status, _, page) = send(&f.router, get("/dashboard/dev/runs", Some(&cookie))).await;
    let first_page = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("<tr data-run=").count(), 50);
    assert!(first_page.as_millis() < 1500, "first page of 10,000 runs took {first_page:?}");

    // Follow "Older" three pages deep: 50 new, strictly older ids each time.
    let ids = |page: &str| -> Vec<String> {
        page.split("<tr data-run=\"").skip(1).map(|s| s.split('"').next().unwrap().to_string()).collect()
    };
    let mut seen = ids(&page);
    let mut page = page;
    for _ in 0..3 {
        let href = page.split("href=\"").find(|s| s.contains("after=")).unwrap().split('"').next().unwrap();
        let href = href.replace("&amp;", "&");
        let started = Instant::now();
        let (_, _, next) = send(&f.router, get(&href, Some(&cookie))).await;
        assert!(started.elapsed().as_millis() < 1500);
        let next_ids = ids(&next);
        assert_eq!(next_ids.len(), 50);
        assert!(next_ids.first().unwrap() < seen.last().unwrap(), "pages go back in time");
        seen.extend(next_ids);
        page = next;
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 200);
    // "Newer" from page 4 is exactly page 3.
    let href = page.split("href=\"").find(|s| s.contains("before=")).unwrap().split('"').next().unwrap();
    let (_, _, back) = send(&f.router, get(&href.replace("&amp;", "&"), Some(&cookie))).await;
    assert_eq!(ids(&back), seen[100..150].to_vec());

    // A filter narrows in the database: 100 tagged runs, two pages.
    let (_, _, tagged) = send(&f.router, get("/dashboard/dev/runs?tag=hundred&size=60", Some(&cookie))).await;
    assert_eq!(ids(&tagged).len(), 60);
    assert!(tagged.contains("Older →"));
}

#[tokio::test]
async fn runs_stream_pushes_rows_of_its_environment_only() {
    use futures_util::StreamExt;
    let f = fixture().await;
    let (cookie, _) = sign_in(&f).await;
    let response =
        f.router.clone().oneshot(get("/dashboard/dev/live/runs?tag=wanted", Some(&cookie))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut read = String::new();
    let mut next_event = async |read: &mut String, until: &str| {
        while !read.contains(until) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
                .await
                .expect("an event within 5 s")
                .unwrap()
                .unwrap();
            read.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    next_event(&mut read, "event: ready").await;

    // A run in another environment is not sent; one in this environment is, with whether
    // it matches the page's filter.
    let tenancy = f.engine.bootstrap("Default", "Default project").await.unwrap();
    let prod = tenancy.environment(EnvironmentType::Production).unwrap().id.clone();
    let manifest = WorkerManifest {
        content_hash: "v1".into(),
        tasks: vec![TaskManifest::new("hello")],
        ..Default::default()
    };
    f.engine.register_worker(&prod, manifest).await.unwrap();
    let trigger = |tags: Vec<String>| TriggerRequest {
        task: "hello".into(),
        payload: Packet::json(&serde_json::json!({})),
        options: TriggerOptions { tags, ..Default::default() },
    };
    let other = f.engine.trigger(&prod, trigger(vec!["wanted".into()])).await.unwrap().run;
    let plain = f.engine.trigger(&f.dev_env, trigger(vec![])).await.unwrap().run;
    let wanted = f.engine.trigger(&f.dev_env, trigger(vec!["wanted".into()])).await.unwrap().run;
    next_event(&mut read, &format!("\"id\":\"{}\"", wanted.id)).await;
    next_event(&mut read, &format!("\"id\":\"{}\"", plain.id)).await;
    assert!(!read.contains(&other.id), "nothing from another environment");
    let event_of =
        |id: &str| read.lines().find(|l| l.contains(&format!("\"id\":\"{id}\""))).unwrap().to_string();
    assert!(event_of(&wanted.id).contains("\"matches\":true"));
    assert!(event_of(&plain.id).contains("\"matches\":false"));
    assert!(event_of(&wanted.id).contains("<tr data-run="));
}
