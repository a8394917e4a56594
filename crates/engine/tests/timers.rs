//! A timer whose action fails is retried later without blocking the timers behind it.

use std::sync::Arc;

use trigger_engine::*;
use trigger_storage_sqlite::SqliteStore;

const T0: i64 = 1_767_225_600_000;

#[tokio::test]
async fn a_failing_timer_is_moved_aside_and_the_others_still_fire() {
    let dir = std::env::temp_dir().join(format!("trigger-timers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.db");
    let clock = ManualClock::new(T0);
    let engine = Engine::start(
        SqliteStore::open(&path).unwrap(),
        EngineOptions { clock: Arc::new(clock.clone()), config: Config::default() },
    );
    let env = engine.create_environment("proj", EnvironmentType::Production, None).await.unwrap();
    engine
        .register_worker(
            &env.id,
            WorkerManifest {
                content_hash: "v1".into(),
                tasks: vec![TaskManifest::new("t")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (broken, _) = engine
        .create_token(&env.id, TokenOptions { timeout_at: Some(T0 + 1_000), ..Default::default() })
        .await
        .unwrap();
    let (healthy, _) = engine
        .create_token(&env.id, TokenOptions { timeout_at: Some(T0 + 2_000), ..Default::default() })
        .await
        .unwrap();

    // Corrupt the first token's stored row behind the engine's back.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE waitpoints SET body = 'not json' WHERE id = ?1", [&broken.id]).unwrap();
    drop(raw);

    clock.advance(2_000);
    assert_eq!(engine.fire_due_timers().await.unwrap(), 1, "the healthy timer fires");
    let healthy = engine.get_waitpoint(Some(&env.id), &healthy.id).await.unwrap();
    assert_eq!(healthy.status, WaitpointStatus::Completed);
    assert!(healthy.output_is_error);
    assert_eq!(
        engine.next_timer_at().await.unwrap(),
        Some(T0 + 2_000 + 60_000),
        "the failing timer is kept, a minute later"
    );
    assert_eq!(engine.fire_due_timers().await.unwrap(), 0, "and does not fire again at once");
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
