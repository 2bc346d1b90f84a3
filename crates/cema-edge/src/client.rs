//! A blocking client of protocol v1 (docs/protocol.md), with ureq: the edge's uplink and
//! downlink threads each own one, so no async runtime is needed on the device.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cema_wire::{
    ApiError, EdgeTelemetry, SessionInfo, UploadAck, NORM_STATE_CONTENT_TYPE, UPLOAD_CONTENT_TYPE,
};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The cloud answered with an error body.
    #[error("cloud refused ({status} {}): {}", .error.code, .error.message)]
    Refused {
        status: u16,
        error: ApiError,
        retry_after_s: Option<u64>,
    },
    /// No usable answer: connection refused or dropped, timeout, unreadable body.
    #[error("network: {0}")]
    Network(String),
    /// The cloud answers, but lacks an extension this edge was told to use (e.g. it does not
    /// list `edge-stats` while the edge shares its statistics).
    #[error("{0}")]
    Unsupported(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { error, .. } => Some(&error.code),
            ClientError::Network(_) | ClientError::Unsupported(_) => None,
        }
    }
}

fn net(e: impl std::fmt::Display) -> ClientError {
    ClientError::Network(e.to_string())
}

/// One device's view of one cloud.
#[derive(Clone)]
pub struct CloudClient {
    agent: ureq::Agent,
    /// Equivalent front ends of one cloud (a fleet's gateways); requests go to `current`, and a
    /// request that gets no answer moves every clone of this client on to the next one.
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    device: String,
    token: String,
}

/// Largest norm state or answer body read (the update stream has its own frame limit).
const MAX_ANSWER: u64 = 64 << 20;

impl CloudClient {
    /// `base` like `http://127.0.0.1:7878`, or several such URLs separated by commas (a fleet's
    /// gateways, tried in turn when one stops answering). `read_timeout` bounds every read,
    /// including the update stream's (which carries a heartbeat every 5 s).
    pub fn new(base: &str, device: &str, token: &str, read_timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_per_read(Some(read_timeout))
            .timeout_per_write(Some(read_timeout))
            .build()
            .new_agent();
        CloudClient {
            agent,
            bases: Arc::new(
                base.split(',')
                    .map(|b| b.trim().trim_end_matches('/').to_string())
                    .collect(),
            ),
            current: Arc::default(),
            device: device.to_string(),
            token: token.to_string(),
        }
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// The front end requests go to now.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Checks cloud base URLs before anything is sent to them: `http://HOST[:PORT][/PATH]`,
    /// comma-separated. (The edge speaks plain HTTP; TLS is a reverse proxy's job.)
    pub fn check_base(bases: &str) -> Result<(), String> {
        bases
            .split(',')
            .map(str::trim)
            .try_for_each(Self::check_one)
    }

    fn check_one(base: &str) -> Result<(), String> {
        let uri: ureq::http::Uri = base
            .parse()
            .map_err(|e| format!("cloud URL `{base}`: {e}"))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(h)) if !h.is_empty() => Ok(()),
            (Some("https"), _) => Err(format!(
                "cloud URL `{base}`: the edge speaks plain http (put TLS in a reverse proxy)"
            )),
            (None, _) => Err(format!(
                "cloud URL `{base}` has no scheme: expected http://HOST:PORT"
            )),
            _ => Err(format!("cloud URL `{base}`: expected http://HOST:PORT")),
        }
    }

    /// The URL of `what` at the current front end, and which one that is.
    fn url(&self, what: &str) -> (String, usize) {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        (
            format!("{}/v1/devices/{}/{what}", self.bases[i], self.device),
            i,
        )
    }

    /// A request to front end `i` got no answer: the next request goes to the next one (once,
    /// however many requests to `i` fail at the same time).
    fn failed(&self, i: usize, e: ureq::Error) -> ClientError {
        if self.bases.len() > 1 {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.bases.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        net(e)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn finish(resp: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ClientError> {
        let status = resp.status().as_u16();
        let retry_after_s = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(net)?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let error = serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| ApiError {
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            expected_seq: None,
        });
        Err(ClientError::Refused {
            status,
            error,
            retry_after_s,
        })
    }

    /// `PUT session` with the edge's norm state.
    pub fn open_session(&self, state: &[u8]) -> Result<SessionInfo, ClientError> {
        let (url, i) = self.url("session");
        let resp = self
            .agent
            .put(&url)
            .header("authorization", &self.auth())
            .header("content-type", NORM_STATE_CONTENT_TYPE)
            .send(state)
            .map_err(|e| self.failed(i, e))?;
        serde_json::from_slice(&Self::finish(resp)?).map_err(net)
    }

    /// `POST uploads`; with `wait` the answer comes after the round ran.
    pub fn upload(&self, body: &[u8], wait: bool) -> Result<UploadAck, ClientError> {
        let (mut url, i) = self.url("uploads");
        if wait {
            url.push_str("?wait=true");
        }
        let resp = self
            .agent
            .post(&url)
            .header("authorization", &self.auth())
            .header("content-type", UPLOAD_CONTENT_TYPE)
            .send(body)
            .map_err(|e| self.failed(i, e))?;
        serde_json::from_slice(&Self::finish(resp)?).map_err(net)
    }

    /// `PUT telemetry`: the edge's running totals, for the cloud's dashboard.
    pub fn telemetry(&self, t: &EdgeTelemetry) -> Result<(), ClientError> {
        let body = serde_json::to_vec(t).expect("serialising telemetry");
        let (url, i) = self.url("telemetry");
        let resp = self
            .agent
            .put(&url)
            .header("authorization", &self.auth())
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| self.failed(i, e))?;
        Self::finish(resp).map(|_| ())
    }

    /// `GET state`: the latest published norm state's bytes.
    pub fn latest_state(&self) -> Result<Vec<u8>, ClientError> {
        let (url, i) = self.url("state");
        let resp = self
            .agent
            .get(&url)
            .header("authorization", &self.auth())
            .call()
            .map_err(|e| self.failed(i, e))?;
        Self::finish(resp)
    }

    /// `GET updates?after=V`: the open stream, to read frames from.
    pub fn updates(&self, after: u64) -> Result<impl Read, ClientError> {
        let (url, i) = self.url("updates");
        let resp = self
            .agent
            .get(&format!("{url}?after={after}"))
            .header("authorization", &self.auth())
            .call()
            .map_err(|e| self.failed(i, e))?;
        if !resp.status().is_success() {
            return Err(Self::finish(resp).expect_err("error status"));
        }
        Ok(resp.into_body().into_reader())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls_need_http_and_a_host() {
        for ok in [
            "http://127.0.0.1:7878",
            "http://cloud.example/",
            "http://h:1/prefix",
            "http://g1:7878,http://g2:7878",
        ] {
            assert_eq!(CloudClient::check_base(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("127.0.0.1:7878", "no scheme"),
            ("https://cloud.example", "plain http"),
            ("ftp://h", "expected http://"),
            ("http://", "cloud URL"),
            ("", "cloud URL"),
            ("http://g1:7878,", "cloud URL"),
            ("http://g1:7878,g2:7878", "no scheme"),
        ] {
            let e = CloudClient::check_base(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_front_end_that_does_not_answer_moves_every_clone_to_the_next() {
        // Ports nothing listens on.
        let free = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        };
        let (a, b) = (free(), free());
        let c = CloudClient::new(&format!("{a}, {b}/"), "d", "t", Duration::from_secs(1));
        let other = c.clone();
        assert_eq!(c.base(), a);
        assert!(matches!(c.latest_state(), Err(ClientError::Network(_))));
        assert_eq!(other.base(), b);
        assert!(matches!(other.latest_state(), Err(ClientError::Network(_))));
        assert_eq!(c.base(), a);
        // One front end: nowhere else to go.
        let one = CloudClient::new(&a, "d", "t", Duration::from_secs(1));
        assert!(one.latest_state().is_err());
        assert_eq!(one.base(), a);
    }
}
