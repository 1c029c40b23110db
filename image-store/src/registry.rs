//! The OCI distribution client: manifests and blobs over HTTP(S), with
//! mirrors tried in order before the upstream host, and anonymous, basic,
//! bearer-token, identity-token and registry-token auth.
//!
//! Our own client on reqwest rather than `oci-client`: pulls stream each
//! blob straight into the hasher and unpacker, mirrors fall back per
//! request, and the CRI's identity and registry tokens need their own flows.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reference::Reference;

/// Media types a manifest may have; sent as `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and indexes above this size are refused.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} not found in {registry} (tried {tried})")]
    NotFound {
        what: String,
        registry: String,
        tried: String,
    },
    #[error("{registry} refused the credentials for {what}")]
    Unauthorized { what: String, registry: String },
    #[error("cannot reach {registry} (tried {tried}): {last}")]
    Unreachable {
        registry: String,
        tried: String,
        last: String,
    },
    #[error("{url}: {why}")]
    BadResponse { url: String, why: String },
    #[error("registry endpoint {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
}

/// `[registry]` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Seconds a registry may take to answer a request whole (a download:
    /// to send its headers), and may stay silent in the middle of a
    /// download.
    pub timeout: u64,
    /// Per registry host, endpoints tried in order before the host itself.
    pub mirrors: BTreeMap<String, Mirror>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            timeout: 60,
            mirrors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `http://host:port` or `https://host[:port]`; plain HTTP is used
    /// where the endpoint says so.
    pub endpoints: Vec<String>,
}

/// Credentials from the CRI `AuthConfig`.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// OAuth2 refresh token, exchanged at the token endpoint.
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

pub struct RegistryClient {
    http: reqwest::Client,
    /// `config.timeout`: for a whole small request, or a download's headers.
    timeout: Duration,
    config: RegistryConfig,
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, RegistryError> {
        for m in config.mirrors.values() {
            for e in &m.endpoints {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return Err(RegistryError::BadEndpoint(e.clone()));
                }
            }
        }
        let timeout = Duration::from_secs(config.timeout.max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .read_timeout(timeout)
            .user_agent(concat!("crius/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::BadResponse {
                url: String::new(),
                why: e.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            timeout,
            config,
        })
    }

    /// Base URLs (without `/v2`) to try for `registry`, in order.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .config
            .mirrors
            .get(registry)
            .map(|m| {
                m.endpoints
                    .iter()
                    .map(|e| e.trim_end_matches('/').trim_end_matches("/v2").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let upstream = self.upstream(registry);
        if !out.contains(&upstream) {
            out.push(upstream);
        }
        out
    }

    /// The registry's own base URL.
    fn upstream(&self, registry: &str) -> String {
        if registry == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else if is_loopback(registry) {
            format!("http://{registry}")
        } else {
            format!("https://{registry}")
        }
    }

    /// A session for one repository: remembers the endpoint that answered
    /// and the token it gave.
    pub fn session<'a>(&'a self, reference: &Reference, creds: &Credentials) -> Session<'a> {
        Session {
            client: self,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            creds: creds.clone(),
            upstream: self.upstream(&reference.registry),
            endpoints: self.endpoints(&reference.registry),
            current: 0,
            auth: None,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

pub struct Session<'a> {
    client: &'a RegistryClient,
    registry: String,
    repository: String,
    /// The pull's credentials: for the registry itself, never a mirror.
    creds: Credentials,
    /// The registry's own endpoint (the last of `endpoints`).
    upstream: String,
    endpoints: Vec<String>,
    current: usize,
    auth: Option<HeaderValue>,
}

/// A fetched manifest or index.
pub struct Fetched {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl<'a> Session<'a> {
    /// A copy that starts where this one is (endpoint and token), for a
    /// parallel download.
    pub fn fork(&self) -> Session<'a> {
        Session {
            client: self.client,
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            creds: self.creds.clone(),
            upstream: self.upstream.clone(),
            endpoints: self.endpoints.clone(),
            current: self.current,
            auth: self.auth.clone(),
        }
    }

    /// Fetches a manifest by tag or digest, trying each endpoint in turn,
    /// and checks it against the digest when one was asked for.
    pub async fn manifest(&mut self, reference: &str) -> Result<Fetched, RegistryError> {
        let path = format!("manifests/{reference}");
        let resp = self
            .get(
                &path,
                Some(MANIFEST_ACCEPT),
                &format!("manifest {reference}"),
            )
            .await?;
        let url = resp.url().to_string();
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_bounded(resp, MAX_MANIFEST_BYTES, &url, self.client.timeout).await?;
        let digest = Digest::of(&bytes);
        if let Ok(want) = Digest::parse(reference)
            && want != digest
        {
            return Err(RegistryError::BadResponse {
                url,
                why: format!("manifest digest is {digest}, asked for {want}"),
            });
        }
        Ok(Fetched {
            digest,
            media_type,
            bytes,
        })
    }

    /// Fetches a small blob whole (an image config), verified.
    pub async fn small_blob(
        &mut self,
        digest: &Digest,
        max: usize,
    ) -> Result<Bytes, RegistryError> {
        let resp = self.blob(digest).await?;
        let url = resp.url().to_string();
        let bytes = read_bounded(resp, max, &url, self.client.timeout).await?;
        let got = Digest::of(&bytes);
        if &got != digest {
            return Err(RegistryError::BadResponse {
                url,
                why: format!("blob digest is {got}, expected {digest}"),
            });
        }
        Ok(bytes)
    }

    /// Why a download's body failed, for the error.
    pub fn body_error(&self, e: &reqwest::Error) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            tried: self
                .endpoints
                .get(self.current)
                .cloned()
                .unwrap_or_default(),
            last: if e.is_timeout() {
                format!(
                    "the download stalled: no data for {} s",
                    self.client.timeout.as_secs()
                )
            } else {
                error_chain(e)
            },
        }
    }

    /// Starts a blob download; the caller streams and verifies the body.
    pub async fn blob(&mut self, digest: &Digest) -> Result<Response, RegistryError> {
        self.get(&format!("blobs/{digest}"), None, &format!("blob {digest}"))
            .await
    }

    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let mut errors: Vec<(String, RegistryError)> = Vec::new();
        let start = self.current;
        for i in start..self.endpoints.len() {
            let base = self.endpoints[i].clone();
            if i != self.current {
                self.current = i;
                self.auth = None;
            }
            let url = format!("{base}/v2/{}/{path}", self.repository);
            match self.get_one(&url, accept, what).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::debug!(url, error = %e, "registry endpoint failed, trying the next");
                    errors.push((base, e));
                }
            }
        }
        // Credentials refused beat "not found" (which a registry may say
        // for a private repository), which beats "unreachable": an offline
        // mirror that lacks the image is reported as not found.
        let tried = errors
            .iter()
            .map(|(base, e)| {
                let outcome = match e {
                    RegistryError::NotFound { .. } => "not found",
                    RegistryError::Unauthorized { .. } => "unauthorized",
                    RegistryError::Unreachable { .. } => "unreachable",
                    _ => "bad response",
                };
                format!("{base}: {outcome}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut unauthorized = None;
        let mut not_found = false;
        let mut bad = None;
        let mut last_unreachable = None;
        for (_, e) in errors {
            match e {
                RegistryError::Unauthorized { .. } => unauthorized = unauthorized.or(Some(e)),
                RegistryError::NotFound { .. } => not_found = true,
                RegistryError::Unreachable { last, .. } => last_unreachable = Some(last),
                e => bad = bad.or(Some(e)),
            }
        }
        Err(if let Some(e) = unauthorized {
            e
        } else if not_found {
            RegistryError::NotFound {
                what: format!("{what} of {}", self.repository),
                registry: self.registry.clone(),
                tried,
            }
        } else if let Some(e) = bad {
            e
        } else {
            RegistryError::Unreachable {
                registry: self.registry.clone(),
                tried,
                last: last_unreachable.unwrap_or_default(),
            }
        })
    }

    /// The credentials for the endpoint in use: the pull's for the
    /// registry itself, none for a mirror (they were given for the
    /// registry, and a mirror is another party).
    fn creds(&self) -> Credentials {
        if self.endpoints.get(self.current) == Some(&self.upstream) {
            self.creds.clone()
        } else {
            Credentials::default()
        }
    }

    async fn get_one(
        &mut self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let creds = self.creds();
        if self.auth.is_none() && !creds.registry_token.is_empty() {
            self.auth = header(&format!("Bearer {}", creds.registry_token));
        }
        let mut tried_auth = false;
        loop {
            let mut req = self.client.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = &self.auth {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let unreachable = |last| RegistryError::Unreachable {
                registry: self.registry.clone(),
                tried: url.to_string(),
                last,
            };
            let resp = tokio::time::timeout(self.client.timeout, req.send())
                .await
                .map_err(|_| unreachable(no_answer(self.client.timeout)))?
                .map_err(|e| unreachable(error_chain(&e)))?;
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::UNAUTHORIZED if !tried_auth => {
                    tried_auth = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.auth = Some(self.authenticate(&challenge, url, what).await?);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Unauthorized {
                        what: what.to_string(),
                        registry: self.registry.clone(),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        what: what.to_string(),
                        registry: self.registry.clone(),
                        tried: url.to_string(),
                    });
                }
                s => {
                    return Err(RegistryError::Unreachable {
                        registry: self.registry.clone(),
                        tried: url.to_string(),
                        last: format!("HTTP {s}"),
                    });
                }
            }
        }
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` value.
    async fn authenticate(
        &self,
        challenge: &str,
        url: &str,
        what: &str,
    ) -> Result<HeaderValue, RegistryError> {
        let unauthorized = || RegistryError::Unauthorized {
            what: what.to_string(),
            registry: self.registry.clone(),
        };
        let (scheme, params) = parse_challenge(challenge);
        let creds = self.creds();
        let has_basic = !creds.username.is_empty() || !creds.password.is_empty();
        if scheme.eq_ignore_ascii_case("basic") {
            if !has_basic {
                return Err(unauthorized());
            }
            return header(&basic(&creds.username, &creds.password)).ok_or_else(unauthorized);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::BadResponse {
                url: url.to_string(),
                why: format!("unsupported auth challenge {challenge:?}"),
            });
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| RegistryError::BadResponse {
                url: url.to_string(),
                why: "bearer challenge without realm".to_string(),
            })?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::BadResponse {
                url: url.to_string(),
                why: format!("token realm {realm:?} is not an http(s) URL"),
            });
        }
        let sends_secret = has_basic || !creds.identity_token.is_empty();
        if sends_secret
            && let Some(rest) = realm.strip_prefix("http://")
            && !is_loopback(rest.split('/').next().unwrap_or(""))
        {
            return Err(RegistryError::BadResponse {
                url: url.to_string(),
                why: format!("token realm {realm:?} is plain HTTP: credentials go only over HTTPS"),
            });
        }
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let service = params.get("service").cloned().unwrap_or_default();
        let resp = if !creds.identity_token.is_empty() {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token.as_str()),
                ("service", service.as_str()),
                ("scope", scope.as_str()),
                ("client_id", "crius"),
            ];
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            self.client
                .http
                .post(realm)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .timeout(self.client.timeout)
                .body(body)
                .send()
                .await
        } else {
            let mut u = format!("{realm}?scope={}", urlencode(&scope));
            if !service.is_empty() {
                u.push_str(&format!("&service={}", urlencode(&service)));
            }
            let mut req = self.client.http.get(u).timeout(self.client.timeout);
            if has_basic {
                req = req.header(AUTHORIZATION, basic(&creds.username, &creds.password));
            }
            req.send().await
        };
        let resp = resp.map_err(|e| RegistryError::Unreachable {
            registry: self.registry.clone(),
            tried: realm.clone(),
            last: error_chain(&e),
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(unauthorized());
        }
        if !resp.status().is_success() {
            return Err(RegistryError::BadResponse {
                url: realm.clone(),
                why: format!("token endpoint answered HTTP {}", resp.status()),
            });
        }
        let body = read_bounded(resp, 1 << 20, realm, self.client.timeout).await?;
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
            url: realm.clone(),
            why: format!("token response: {e}"),
        })?;
        let token = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if token.is_empty() {
            return Err(unauthorized());
        }
        header(&format!("Bearer {token}")).ok_or_else(unauthorized)
    }
}

fn header(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{user}:{pass}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Splits `Bearer realm="x",service="y"` into the scheme and its parameters.
fn parse_challenge(h: &str) -> (String, BTreeMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

/// Reads a response body whole within `timeout`, refusing more than `max`
/// bytes.
async fn read_bounded(
    mut resp: Response,
    max: usize,
    url: &str,
    timeout: Duration,
) -> Result<Bytes, RegistryError> {
    let too_big = || RegistryError::BadResponse {
        url: url.to_string(),
        why: format!("body larger than {max} bytes"),
    };
    let unreachable = |last| RegistryError::Unreachable {
        registry: String::new(),
        tried: url.to_string(),
        last,
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let read = async {
        let mut buf = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?
        {
            if buf.len() + chunk.len() > max {
                return Err(too_big());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| unreachable(no_answer(timeout)))?
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer within {} s", timeout.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="x\"y""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "x\"y");
        let (s, p) = parse_challenge("");
        assert_eq!(s, "");
        assert!(p.is_empty());
    }

    #[test]
    fn mirrors_come_first_then_upstream() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "registry.k8s.io".into(),
            Mirror {
                endpoints: vec![
                    "http://127.0.0.1:5000/".into(),
                    "https://m.example/v2".into(),
                ],
            },
        );
        let c = RegistryClient::new(config).unwrap();
        assert_eq!(
            c.endpoints("registry.k8s.io"),
            vec![
                "http://127.0.0.1:5000",
                "https://m.example",
                "https://registry.k8s.io"
            ]
        );
        assert_eq!(
            c.endpoints("docker.io"),
            vec!["https://registry-1.docker.io"]
        );
        assert_eq!(c.endpoints("127.0.0.1:9"), vec!["http://127.0.0.1:9"]);
        assert_eq!(c.endpoints("localhost"), vec!["http://localhost"]);
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "x.io".into(),
            Mirror {
                endpoints: vec!["ftp://x".into()],
            },
        );
        assert!(RegistryClient::new(config).is_err());
    }
}
