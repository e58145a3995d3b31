//! A small client of the syncjobs REST API (routes per API.md), for setting up and
//! observing benchmarks. Every call checks the status and names the route when it fails.

use crate::error::{BenchError, Result};
use crate::workload::timed_config;
use futures::{stream, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A slow timed source: 100 entities over 600 s (its longest duration), so that its job
/// runs for the whole benchmark and writes now and then.
pub const SLOW_COUNT: u64 = 100;
pub const SLOW_SECONDS: f64 = 600.0;

/// No single request of a benchmark may hang it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection idle this long is not reused: the server closes keep-alive
/// connections idle for 5 s (`SYNCJOBS_KEEP_ALIVE_SECONDS`), and a request sent on one as it
/// closes fails ("error sending request"), as #10's did on the server left idle while the
/// other one was set up.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// The fields of a job the benchmarks look at.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub source_connection_id: Uuid,
    pub status: String,
}

impl Job {
    fn from_json(v: &Value, source_connection_id: Uuid) -> Result<Job> {
        let id = v["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| BenchError::failed(format!("a job without an id: {v}")))?;
        let status = v["status"]
            .as_str()
            .ok_or_else(|| BenchError::failed(format!("a job without a status: {v}")))?;
        Ok(Job {
            id,
            source_connection_id,
            status: status.to_string(),
        })
    }

    fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

impl Api {
    pub fn new(base_url: &str, key: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;
        Ok(Api {
            http,
            base: base_url.to_string(),
            key: key.to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn job_path(scid: Uuid, job_id: Uuid) -> String {
        format!("/source-connections/{scid}/jobs/{job_id}")
    }

    /// Sends a request with the key and returns the body of a 200, or an error with the
    /// route, the status and the detail.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("x-api-key", &self.key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        if status != StatusCode::OK {
            return Err(BenchError::failed(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The body of a GET, as the server sent it.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let res = self
            .http
            .get(self.url(path))
            .header("x-api-key", &self.key)
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            return Err(BenchError::failed(format!("GET {path}: {}", res.status())));
        }
        Ok(res.bytes().await?.to_vec())
    }

    pub async fn health(&self) -> Result<Value> {
        self.call(Method::GET, "/health", None).await
    }

    /// Creates a collection; returns its readable id.
    pub async fn create_collection(&self, name: &str) -> Result<String> {
        let v = self
            .call(Method::POST, "/collections", Some(json!({ "name": name })))
            .await?;
        v["readable_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| BenchError::failed(format!("a collection without readable_id: {v}")))
    }

    /// `POST /source-connections` of a timed source; the answer as it is.
    async fn post_timed_connection(
        &self,
        collection: &str,
        name: &str,
        config: Value,
        sync_immediately: bool,
    ) -> Result<Value> {
        let body = json!({
            "short_name": "timed",
            "readable_collection_id": collection,
            "name": name,
            "config": config,
            "authentication": {"credentials": {"timed_key": "bench"}},
            "sync_immediately": sync_immediately,
        });
        self.call(Method::POST, "/source-connections", Some(body))
            .await
    }

    /// Creates a timed source connection that does not sync yet; returns its id.
    pub async fn create_timed_connection(
        &self,
        collection: &str,
        name: &str,
        config: Value,
    ) -> Result<Uuid> {
        let v = self
            .post_timed_connection(collection, name, config, false)
            .await?;
        v["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| BenchError::failed(format!("a source connection without id: {v}")))
    }

    /// Creates a timed source connection with its first sync (`sync_immediately`); returns
    /// its id and the first job's.
    pub async fn create_timed_connection_with_sync(
        &self,
        collection: &str,
        name: &str,
        config: Value,
    ) -> Result<(Uuid, Uuid)> {
        let v = self
            .post_timed_connection(collection, name, config, true)
            .await?;
        let uuid = |field: &Value| field.as_str().and_then(|s| Uuid::parse_str(s).ok());
        match (uuid(&v["id"]), uuid(&v["sync"]["last_job"]["id"])) {
            (Some(scid), Some(job)) => Ok((scid, job)),
            _ => Err(BenchError::failed(format!(
                "a source connection without its id or first job: {v}"
            ))),
        }
    }

    /// Opens the job's server-sent event stream (`GET /sync/job/{job_id}/subscribe`); the
    /// caller reads its chunks.
    pub async fn subscribe(&self, job_id: Uuid) -> Result<reqwest::Response> {
        let path = format!("/sync/job/{job_id}/subscribe");
        let res = self
            .http
            .get(self.url(&path))
            .header("x-api-key", &self.key)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if res.status() != StatusCode::OK {
            return Err(BenchError::failed(format!("GET {path}: {}", res.status())));
        }
        Ok(res)
    }

    /// Starts a sync of the connection; returns the new (pending) job.
    pub async fn run(&self, scid: Uuid) -> Result<Job> {
        let v = self
            .call(
                Method::POST,
                &format!("/source-connections/{scid}/run"),
                None,
            )
            .await?;
        Job::from_json(&v, scid)
    }

    pub async fn job(&self, scid: Uuid, job_id: Uuid) -> Result<Job> {
        let v = self
            .call(Method::GET, &Api::job_path(scid, job_id), None)
            .await?;
        Job::from_json(&v, scid)
    }

    /// The connection's jobs, newest first (`limit` 1..1000).
    pub async fn jobs_of(&self, scid: Uuid, limit: usize) -> Result<Vec<Job>> {
        let v = self
            .call(
                Method::GET,
                &format!("/source-connections/{scid}/jobs?limit={limit}"),
                None,
            )
            .await?;
        v.as_array()
            .ok_or_else(|| BenchError::failed(format!("a job list that is not a list: {v}")))?
            .iter()
            .map(|job| Job::from_json(job, scid))
            .collect()
    }

    /// A page of the key's source connections, newest first: their ids.
    pub async fn source_connection_ids(&self, skip: usize, limit: usize) -> Result<Vec<Uuid>> {
        let v = self
            .call(
                Method::GET,
                &format!("/source-connections?skip={skip}&limit={limit}"),
                None,
            )
            .await?;
        v.as_array()
            .ok_or_else(|| BenchError::failed(format!("a listing that is not a list: {v}")))?
            .iter()
            .map(|sc| {
                sc["id"]
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| {
                        BenchError::failed(format!("a source connection without id: {sc}"))
                    })
            })
            .collect()
    }

    /// Deletes a source connection; returns it as it was.
    pub async fn delete_source_connection(&self, scid: Uuid) -> Result<Value> {
        self.call(Method::DELETE, &format!("/source-connections/{scid}"), None)
            .await
    }

    /// Asks for the job's cancellation; returns the job as the answer shows it.
    pub async fn cancel(&self, scid: Uuid, job_id: Uuid) -> Result<Job> {
        let path = format!("{}/cancel", Api::job_path(scid, job_id));
        let v = self.call(Method::POST, &path, None).await?;
        Job::from_json(&v, scid)
    }

    /// GETs the job every `poll` (back to back when zero: then an observation is late by at
    /// most one GET round trip) until it shows `status`; an error if it ends in another
    /// final state, or after `timeout`.
    pub async fn wait_for_status(
        &self,
        scid: Uuid,
        job_id: Uuid,
        status: &str,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Job> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(scid, job_id).await?;
            if job.status == status {
                return Ok(job);
            }
            if job.is_final() {
                return Err(BenchError::failed(format!(
                    "job {job_id} ended {} while waiting for {status}",
                    job.status
                )));
            }
            if Instant::now() >= deadline {
                return Err(BenchError::failed(format!(
                    "job {job_id} still {} after {timeout:?} (waiting for {status})",
                    job.status
                )));
            }
            if poll.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// Creates `count` connections with slow timed sources, starts a job on each and waits
/// until all of them run, `concurrency` at a time. `first` numbers the connections.
pub async fn start_slow_jobs(
    api: &Api,
    collection: &str,
    first: usize,
    count: usize,
    concurrency: usize,
) -> Result<Vec<Job>> {
    stream::iter(first..first + count)
        .map(|i| async move {
            let config = timed_config(SLOW_COUNT, SLOW_SECONDS, i as i64);
            let scid = api
                .create_timed_connection(collection, &format!("slow {i:05}"), config)
                .await?;
            let job = api.run(scid).await?;
            api.wait_for_status(
                scid,
                job.id,
                "running",
                Duration::from_millis(50),
                Duration::from_secs(300),
            )
            .await
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}
