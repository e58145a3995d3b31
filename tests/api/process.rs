//! The real binary: `syncjobs serve` on the embedded store, its first-start key, `keys
//! create|revoke|list` against a running server, and a graceful stop on SIGTERM (event
//! streams included).

use crate::helpers::parts;
use crate::sse_client::SseStream;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_syncjobs");

struct Server {
    child: Child,
    address: String,
    stdout: String,
    /// Everything the server logged on stderr so far.
    logs: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn syncjobs(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("SYNCJOBS_DATA_DIR", data_dir)
        .env("SYNCJOBS_BIND", "127.0.0.1:0")
        .env("SYNCJOBS_LOG_FORMAT", "json")
        .env("SYNCJOBS_HTTP_WORKERS", "2");
    cmd
}

/// Starts `syncjobs` (no subcommand: serve) and waits for its "listening" log line.
fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> Server {
    let mut cmd = syncjobs(data_dir);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut all) = kept.lock() {
                all.push_str(&line);
                all.push('\n');
            }
            let parsed: Option<Value> = serde_json::from_str(&line).ok();
            if let Some(address) = parsed
                .as_ref()
                .and_then(|v| v["fields"]["address"].as_str())
                .filter(|_| line.contains("syncjobs listening"))
            {
                let _ = tx.send(address.to_owned());
            }
            // keep draining so the server never blocks on a full pipe
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the server never said it was listening"));
    Server {
        child,
        address: format!("http://{address}"),
        stdout: String::new(),
        logs,
    }
}

/// Sends SIGTERM and waits for the exit; returns (success, everything printed on stdout).
fn terminate(mut s: Server) -> (bool, String) {
    let pid = s.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(mut out) = s.child.stdout.take() {
        let _ = out.read_to_string(&mut s.stdout);
    }
    (status.success(), std::mem::take(&mut s.stdout))
}

fn cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = syncjobs(data_dir)
        .args(args)
        .output()
        .expect("the CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    path: &str,
) -> (reqwest::StatusCode, Value) {
    let r = client
        .get(format!("{}{path}", server.address))
        .header("x-api-key", key)
        .send()
        .await
        .expect("answered");
    parts(r).await
}

/// Polls until `path` answers `status` with `key` (keys made by another process show up
/// at the server's next poll of the log).
async fn wait_for_status(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    path: &str,
    status: u16,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = get(client, server, key, path).await;
        if got.as_u16() == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn first_start_prints_a_key_once_and_the_cli_manages_keys_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = start(dir.path(), &[]);
    let (ok, first_out) = {
        // The key is printed before the server serves; read it after a clean stop.
        let (status, _) = get(&client, &server, "nope-nope-nope-nope", "/collections").await;
        assert_eq!(status, 403);
        terminate(server)
    };
    assert!(ok, "exit 0 after SIGTERM");
    let key = first_out
        .split_whitespace()
        .find(|w| w.starts_with("sjk_"))
        .unwrap_or_else(|| panic!("no key printed: {first_out:?}"))
        .to_owned();
    assert!(
        dir.path().join("read_model.db").exists(),
        "the read model is kept on disk"
    );

    let server = start(dir.path(), &[]);
    assert_eq!(
        get(&client, &server, &key, "/collections").await.0,
        200,
        "the printed key works"
    );

    let (ok, out, err) = cli(dir.path(), &["keys", "create", "--org", "acme"]);
    assert!(ok, "{err}");
    let acme = out.trim().to_owned();
    assert!(
        acme.starts_with("sjk_") && !out.trim().contains(' '),
        "only the key on stdout: {out:?}"
    );
    wait_for_status(&client, &server, &acme, "/collections", 200).await;

    let (ok, listed, err) = cli(dir.path(), &["keys", "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains("acme") && listed.contains("default"),
        "{listed}"
    );
    assert!(
        !listed.contains(&acme) && !listed.contains(&key),
        "keys are never listed in clear"
    );

    let prefix: String = acme.chars().take(8).collect();
    let (ok, _, err) = cli(dir.path(), &["keys", "revoke", &prefix]);
    assert!(ok, "{err}");
    wait_for_status(&client, &server, &acme, "/collections", 403).await;
    assert_eq!(get(&client, &server, &key, "/collections").await.0, 200);
    let (ok, second_out) = terminate(server);
    assert!(ok);
    assert!(
        !second_out.contains("sjk_"),
        "a key is printed only at the first start: {second_out:?}"
    );
}

#[actix_web::test]
async fn sigterm_lets_an_in_flight_request_finish_and_a_restart_serves_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let key = "process-test-key-0123456789";
    let env = [
        ("SYNCJOBS_BOOTSTRAP_API_KEY", key),
        ("SYNCJOBS_DELETE_WAIT_SECONDS", "1"),
    ];
    let client = reqwest::Client::new();
    let server = start(dir.path(), &env);
    let post = |path: String, body: Value| {
        let req = client
            .post(format!("{}{path}", server.address))
            .header("x-api-key", key)
            .json(&body);
        async move { parts(req.send().await.expect("answered")).await }
    };
    assert_eq!(
        post(
            "/collections".into(),
            json!({"name": "Process", "readable_id": "process"})
        )
        .await
        .0,
        200
    );
    let (status, sc) = post(
        "/source-connections".into(),
        // ignore_cancel: the sync will not stop, so the delete waits its full second
        json!({"short_name": "timed", "readable_collection_id": "process", "config": {"entity_count": 1000, "duration_seconds": 30, "ignore_cancel": true}}),
    )
    .await;
    assert_eq!(status, 200, "{sc}");
    let sc = sc["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(&client, &server, key, &format!("/source-connections/{sc}")).await;
        if body["sync"]["last_job"]["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never running: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A delete (which cancels and waits for the running sync) in flight when SIGTERM arrives.
    let delete = client
        .delete(format!("{}/source-connections/{sc}", server.address))
        .header("x-api-key", key)
        .send();
    let pid = server.child.id().to_string();
    let signal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    };
    let started = Instant::now();
    let (answer, ()) = futures::join!(delete, signal);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the delete was in flight at the signal"
    );
    let (status, body) = parts(answer.expect("the in-flight delete is answered")).await;
    assert_eq!(status, 200, "{body}");
    let (ok, _) = terminate_after_signal(server);
    assert!(ok, "exit 0");

    let server = start(dir.path(), &env);
    assert_eq!(
        get(&client, &server, key, &format!("/source-connections/{sc}"))
            .await
            .0,
        404,
        "the delete was durable"
    );
    let (status, body) = get(&client, &server, key, "/collections/process").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "NEEDS SOURCE");
    terminate(server);
}

#[actix_web::test]
async fn sigterm_ends_open_event_streams_cleanly_instead_of_waiting_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = "process-test-key-0123456789";
    let env = [
        ("SYNCJOBS_BOOTSTRAP_API_KEY", key),
        ("SYNCJOBS_SHUTDOWN_TIMEOUT_SECONDS", "30"),
    ];
    let client = reqwest::Client::new();
    let server = start(dir.path(), &env);
    let post = |path: &str, body: Value| {
        let req = client
            .post(format!("{}{path}", server.address))
            .header("x-api-key", key)
            .json(&body);
        async move { parts(req.send().await.expect("answered")).await }
    };
    let (status, _) = post(
        "/collections",
        json!({"name": "Streams", "readable_id": "streams"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, sc) = post(
        "/source-connections",
        json!({"short_name": "timed", "readable_collection_id": "streams", "config": {"entity_count": 1000, "duration_seconds": 60}}),
    )
    .await;
    assert_eq!(status, 200, "{sc}");
    let sc = sc["id"].as_str().unwrap().to_owned();
    let (_, jobs) = get(
        &client,
        &server,
        key,
        &format!("/source-connections/{sc}/jobs"),
    )
    .await;
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    let base = format!("{}/source-connections/{sc}/jobs/{job}", server.address);
    let mut events = SseStream::open(&format!("{base}/events"), Some(key), &[]).await;
    let mut progress = SseStream::open(
        &format!("{}/sync/job/{job}/subscribe", server.address),
        Some(key),
        &[],
    )
    .await;
    assert_eq!(events.next_data().await.unwrap().id, Some(1));
    assert_eq!(
        progress.next_data().await.unwrap().json()["type"],
        "connected"
    );

    let pid = server.child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Both streams end as streams do (no broken chunk), while the job still runs.
    events.rest().await;
    progress.rest().await;
    let (ok, _) = terminate_after_signal(server);
    assert!(ok, "exit 0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop waited {:?} for open streams (shutdown timeout 30 s)",
        started.elapsed()
    );
}

/// Waits for a server already sent SIGTERM to exit.
fn terminate_after_signal(mut s: Server) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            return (status.success(), String::new());
        }
        assert!(Instant::now() < deadline, "the server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[actix_web::test]
async fn api_keys_never_reach_the_logs_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = "bootstrap-key-that-must-stay-secret-0123";
    let wrong = "wrong-key-that-must-stay-secret-4567";
    let mut server = start(
        dir.path(),
        &[
            ("SYNCJOBS_BOOTSTRAP_API_KEY", key),
            ("SYNCJOBS_LOG", "trace"),
        ],
    );
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/collections", server.address))
        .header("x-api-key", key)
        .json(&json!({"name": "Secret keeping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    assert_eq!(get(&client, &server, wrong, "/collections").await.0, 403);
    assert!(terminate_keeping_logs(&mut server));
    let logs = server.logs.lock().unwrap().clone();
    assert!(
        logs.contains("/collections"),
        "requests were logged: {logs}"
    );
    assert!(
        !logs.contains(key),
        "the bootstrap key leaked into the logs"
    );
    assert!(
        !logs.contains(wrong),
        "a presented key leaked into the logs"
    );
    let (ok, listed, _) = cli(dir.path(), &["keys", "list"]);
    assert!(ok && !listed.contains(key));
}

/// SIGTERM and wait for the exit, leaving the server (and its collected logs) to the caller.
fn terminate_keeping_logs(s: &mut Server) -> bool {
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs")
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = s.child.try_wait().expect("wait") {
            // Give the log-draining thread a moment to read the last lines.
            std::thread::sleep(Duration::from_millis(100));
            return status.success();
        }
        assert!(Instant::now() < deadline, "the server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_port_already_taken_is_a_clear_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = syncjobs(dir.path())
        .env("SYNCJOBS_BIND", &address)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("syncjobs: ") && stderr.contains(&address),
        "the error names the address: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `SYNCJOBS_STORE` naming a backend this build does not have, or a PostgreSQL server that is
/// not there: `serve` and the CLI refuse it at once (the first with the backends they do
/// have), the exit code of any other configuration error, and the URL's password masked.
#[test]
fn an_unknown_store_backend_is_a_clear_error_naming_the_ones_this_build_has() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    for (url, masked, says) in [
        (
            "mysql://app:s3cret@127.0.0.1:3306/jobs",
            "mysql://app:***@127.0.0.1:3306/jobs",
            "no backend 'mysql'",
        ),
        (
            "postgres://app:s3cret@127.0.0.1:1/jobs",
            "postgres://app:***@127.0.0.1:1/jobs",
            "the database is unreachable",
        ),
    ] {
        for (args, code) in [
            (&[][..], 1),
            (&["keys", "create"], 1),
            (&["keys", "list"], 1),
            (&["verify"], 2),
        ] {
            let out = syncjobs(dir.path())
                .env("SYNCJOBS_STORE", url)
                .args(args)
                .output()
                .expect("the binary runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(
                stderr.contains("syncjobs: ") && stderr.contains(says),
                "{args:?}: the error says what is wrong: {stderr}"
            );
            if url.starts_with("mysql") {
                assert!(
                    stderr.contains("sqlite://DIR") && stderr.contains("postgres://"),
                    "{args:?}: the error names the backends of this build: {stderr}"
                );
            }
            assert!(
                stderr.contains(masked) && !stderr.contains("s3cret"),
                "{args:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    assert!(
        !dir.path().join("events.db").exists(),
        "no embedded store was made instead"
    );
}

/// Polls `GET path` until `check` holds on the body.
async fn wait_until(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get(client, server, key, path).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never {what}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start_and_names_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key = "lock-test-key-0123456789";
    let env = [("SYNCJOBS_BOOTSTRAP_API_KEY", key)];
    let client = reqwest::Client::new();
    let mut first = start(&dir, &env);
    let req = |path: &str| {
        client
            .post(format!("{}{path}", first.address))
            .header("x-api-key", key)
    };
    let (status, _) = parts(
        req("/collections")
            .json(&json!({"name": "Locked", "readable_id": "locked"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, sc) = parts(
        req("/source-connections")
            .json(
                &json!({"short_name": "timed", "readable_collection_id": "locked",
                          "config": {"entity_count": 1000, "duration_seconds": 30}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{sc}");
    let sc_path = format!("/source-connections/{}", sc["id"].as_str().unwrap());
    wait_until(&client, &first, key, &sc_path, "running", |b| {
        b["sync"]["last_job"]["status"] == "running"
    })
    .await;

    let started = Instant::now();
    let out = syncjobs(&dir)
        .env("SYNCJOBS_BOOTSTRAP_API_KEY", key)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exits at once"
    );
    assert!(
        stderr.contains(&dir.display().to_string())
            && stderr.contains(&format!("pid {}", first.child.id())),
        "the refusal names the directory and the holder's pid: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The first server's job was left alone: still running, not resumed or failed.
    let (_, body) = get(&client, &first, key, &sc_path).await;
    assert_eq!(body["sync"]["last_job"]["status"], "running", "{body}");

    // A crash leaves the lock file behind; it does not block the next start.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(dir.join("serve.lock").exists());
    // With no resume allowed (SYNCJOBS_MAX_RESUMES=0) the interrupted job fails at once,
    // naming its lost worker, instead of running again for 30 s.
    let second = start(&dir, &[env[0], ("SYNCJOBS_MAX_RESUMES", "0")]);
    let body = wait_until(&client, &second, key, &sc_path, "recovered", |b| {
        b["sync"]["last_job"]["status"] != "running"
    })
    .await;
    assert_eq!(body["sync"]["last_job"]["status"], "failed", "{body}");
    assert_eq!(
        body["sync"]["last_job"]["error_category"], "worker_lost",
        "{body}"
    );
}

#[cfg(unix)]
/// `rebuild-read-model` folds the whole log into a new read model: refused while a server
/// holds the directory (its projector is the read model's one writer), and the next start
/// answers exactly what the server answered before.
#[actix_web::test]
async fn the_read_model_is_rebuilt_by_command_only_while_no_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key = "rebuild-test-key-0123456789";
    let env = [("SYNCJOBS_BOOTSTRAP_API_KEY", key)];
    let client = reqwest::Client::new();
    let server = start(&dir, &env);
    let (status, _) = parts(
        client
            .post(format!("{}/collections", server.address))
            .header("x-api-key", key)
            .json(&json!({"name": "Rebuilt", "readable_id": "rebuilt"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let before = get(&client, &server, key, "/collections").await;

    let (ok, _, err) = cli(&dir, &["rebuild-read-model"]);
    assert!(!ok, "refused beside a running server");
    assert!(err.contains("in use by another syncjobs server"), "{err}");
    assert!(terminate(server).0);

    let (ok, out, err) = cli(&dir, &["rebuild-read-model"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("read model rebuilt from the log"), "{out}");
    let server = start(&dir, &env);
    assert_eq!(get(&client, &server, key, "/collections").await, before);
    assert!(terminate(server).0);
}

#[actix_web::test]
async fn data_files_and_directories_are_the_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key = "perm-test-key-0123456789";
    let client = reqwest::Client::new();
    let mut server = start(&dir, &[("SYNCJOBS_BOOTSTRAP_API_KEY", key)]);
    let post = |path: &str, body: Value| {
        client
            .post(format!("{}{path}", server.address))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    assert_eq!(
        post(
            "/collections",
            json!({"name": "Perms", "readable_id": "perms"})
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let r = post(
        "/source-connections",
        json!({"short_name": "timed", "readable_collection_id": "perms",
               "config": {"entity_count": 20, "duration_seconds": 0.2}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let sc = parts(r).await.1["id"].as_str().unwrap().to_owned();
    wait_until(
        &client,
        &server,
        key,
        &format!("/source-connections/{sc}"),
        "completed",
        |b| b["sync"]["last_job"]["status"] == "completed",
    )
    .await;
    // The read model has its database; the CLI writes to the store too.
    assert!(terminate_keeping_logs(&mut server));
    let (ok, _, err) = cli(&dir, &["keys", "create", "--org", "other"]);
    assert!(ok, "{err}");

    let mut seen = Vec::new();
    let mut dirs = vec![dir.clone()];
    while let Some(d) = dirs.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
                seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    for file in ["events.db", "entities.db", "read_model.db", "serve.lock"] {
        assert!(seen.iter().any(|f| f == file), "{file} not among {seen:?}");
    }
}

#[test]
fn reading_commands_never_create_a_store_and_say_there_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let job = "01a225c8-3c4a-7510-93b6-58ff785d1d29";
    for args in [
        &["events", job][..],
        &["replay", job],
        &["export", job],
        &["verify"],
        &["keys", "list"],
        &["keys", "revoke", "sjk_abc"],
    ] {
        let (ok, _, err) = cli(&dir, args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            err.contains("no event store in") && err.contains(&dir.display().to_string()),
            "{args:?}: {err}"
        );
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
    // An empty directory is no store either.
    std::fs::create_dir(&dir).unwrap();
    let (ok, _, err) = cli(&dir, &["verify"]);
    assert!(!ok && err.contains("no event store in"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing created"
    );
}

/// `serve` on a PostgreSQL store keeps the synced entities in that database (no
/// `entities.db` in the data directory): the API shows their counts, a delete purges them.
#[actix_web::test]
async fn on_postgres_the_server_keeps_entities_in_the_database_not_the_data_directory() {
    use syncjobs_store_postgres::testkit::{admin_url, TestDb};
    let Some(admin) =
        admin_url("on_postgres_the_server_keeps_entities_in_the_database_not_the_data_directory")
    else {
        return;
    };
    let db = TestDb::create(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let key = "pg-destination-key-0123456789";
    let server = start(
        dir.path(),
        &[
            ("SYNCJOBS_STORE", db.url.as_str()),
            ("SYNCJOBS_BOOTSTRAP_API_KEY", key),
        ],
    );
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = client
            .post(format!("{}{path}", server.address))
            .header("x-api-key", key)
            .json(&body);
        async move { parts(req.send().await.expect("answered")).await }
    };
    let (status, body) = post(
        "/collections",
        json!({"name": "On PostgreSQL", "readable_id": "on-postgres"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, sc) = post(
        "/source-connections",
        json!({"short_name": "timed", "readable_collection_id": "on-postgres",
               "config": {"entity_count": 25, "duration_seconds": 0.1}}),
    )
    .await;
    assert_eq!(status, 200, "{sc}");
    let sc = sc["id"].as_str().unwrap().to_owned();
    let path = format!("/source-connections/{sc}");
    wait_until(&client, &server, key, &path, "synced", |b| {
        b["entities"]["total_entities"] == 26
    })
    .await;
    let sc_id = uuid::Uuid::parse_str(&sc).unwrap();
    assert_eq!(
        entity_rows(&db, sc_id).await,
        26,
        "the entities are in the database"
    );
    assert!(
        !dir.path().join("entities.db").exists(),
        "no entities.db in the data directory"
    );
    let r = client
        .delete(format!("{}{path}", server.address))
        .header("x-api-key", key)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    assert_eq!(entity_rows(&db, sc_id).await, 0, "the delete purged them");
    let (ok, _) = terminate(server);
    assert!(ok, "exit 0");
}

/// How many entities of `sc` the PostgreSQL destination in `db` holds.
async fn entity_rows(db: &syncjobs_store_postgres::testkit::TestDb, sc: uuid::Uuid) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM syncjobs_entities WHERE source_connection_id = $1",
            &[&sc],
        )
        .await
        .unwrap()
        .get(0)
}
