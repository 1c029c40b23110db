//! The registry client's auth flows against a small in-process HTTP server
//! that speaks just enough of the distribution API: bearer challenges with
//! basic credentials, identity-token exchange, registry tokens, and basic
//! auth. (The real docker-registry with htpasswd is exercised in e2e.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use image_store::registry::{Credentials, RegistryClient, RegistryConfig};
use image_store::{Digest, Reference};

const MANIFEST: &[u8] = br#"{"schemaVersion":2}"#;

struct Request {
    method: String,
    path: String,
    auth: String,
    body: String,
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// Serves `handler` on a loopback port; returns the port and a log of requests.
fn serve(handler: fn(&Request, u16) -> Reply) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut auth = String::new();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or(("", ""));
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = v.trim().to_string(),
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let req = Request {
                method,
                path,
                auth,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            log2.lock()
                .unwrap()
                .push(format!("{} {} [{}]", req.method, req.path, req.auth));
            let (code, headers, body) = handler(&req, port);
            let mut out = format!(
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = s.write_all(out.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (port, log)
}

fn manifest_ok() -> Reply {
    (
        200,
        vec![(
            "Content-Type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        MANIFEST.to_vec(),
    )
}

async fn fetch(port: u16, creds: Credentials) -> Result<Digest, String> {
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{port}/team/app:v1")).unwrap();
    let mut s = client.session(&r, &creds);
    s.manifest("v1")
        .await
        .map(|f| f.digest)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn bearer_token_with_basic_credentials() {
    let (port, log) = serve(|req, port| {
        if req.path.starts_with("/token") {
            // "user:pass"
            if req.auth == "Basic dXNlcjpwYXNz"
                && req.path.contains("scope=repository%3Ateam%2Fapp%3Apull")
            {
                return (200, vec![], br#"{"token":"T1"}"#.to_vec());
            }
            return (401, vec![], vec![]);
        }
        if req.auth == "Bearer T1" {
            return manifest_ok();
        }
        let challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="reg",scope="repository:team/app:pull""#
        );
        (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
    });
    let creds = Credentials {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    assert_eq!(fetch(port, creds).await.unwrap(), Digest::of(MANIFEST));
    let bad = Credentials {
        username: "user".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = fetch(port, bad).await.unwrap_err();
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /token"))
    );
}

#[tokio::test]
async fn identity_token_is_exchanged_by_post() {
    let (port, _) = serve(|req, port| {
        if req.path.starts_with("/token") {
            if req.method == "POST"
                && req.body.contains("grant_type=refresh_token")
                && req.body.contains("refresh_token=RT")
            {
                return (200, vec![], br#"{"access_token":"T2"}"#.to_vec());
            }
            return (401, vec![], vec![]);
        }
        if req.auth == "Bearer T2" {
            return manifest_ok();
        }
        let challenge = format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="reg""#);
        (401, vec![("WWW-Authenticate".into(), challenge)], vec![])
    });
    let creds = Credentials {
        identity_token: "RT".into(),
        ..Default::default()
    };
    assert_eq!(fetch(port, creds).await.unwrap(), Digest::of(MANIFEST));
}

#[tokio::test]
async fn registry_token_is_sent_as_is_and_basic_challenges_answered() {
    let (port, log) = serve(|req, _| {
        if req.auth == "Bearer RGT" || req.auth == "Basic dXNlcjpwYXNz" {
            return manifest_ok();
        }
        (
            401,
            vec![("WWW-Authenticate".into(), r#"Basic realm="r""#.into())],
            vec![],
        )
    });
    let creds = Credentials {
        registry_token: "RGT".into(),
        ..Default::default()
    };
    assert_eq!(fetch(port, creds).await.unwrap(), Digest::of(MANIFEST));
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the registry token goes with the first request"
    );
    let creds = Credentials {
        username: "user".into(),
        password: "pass".into(),
        ..Default::default()
    };
    assert_eq!(fetch(port, creds).await.unwrap(), Digest::of(MANIFEST));
    let e = fetch(port, Credentials::default()).await.unwrap_err();
    assert!(e.contains("refused the credentials"), "{e}");
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let (port, _) = serve(|_, _| manifest_ok());
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    let want = Digest::of(b"something else");
    let r = Reference::parse(&format!("127.0.0.1:{port}/team/app@{want}")).unwrap();
    let mut s = client.session(&r, &Credentials::default());
    let e = s
        .manifest(want.as_str())
        .await
        .err()
        .expect("mismatch refused");
    assert!(e.to_string().contains("asked for"), "{e}");
}

/// Credentials are for the registry they were given for: a mirror that
/// challenges gets none (and the pull goes on to the registry, which gets
/// them).
#[tokio::test]
async fn a_mirror_never_gets_the_credentials() {
    let (mirror, mirror_log) = serve(|_, _| {
        (
            401,
            vec![("WWW-Authenticate".into(), r#"Basic realm="m""#.into())],
            vec![],
        )
    });
    let (registry, _) = serve(|req, _| {
        if req.auth == "Basic dXNlcjpwYXNz" || req.auth == "Bearer RGT" {
            return manifest_ok();
        }
        (
            401,
            vec![("WWW-Authenticate".into(), r#"Basic realm="r""#.into())],
            vec![],
        )
    });
    let host = format!("127.0.0.1:{registry}");
    let mut config = RegistryConfig::default();
    config.mirrors.insert(
        host.clone(),
        image_store::registry::Mirror {
            endpoints: vec![format!("http://127.0.0.1:{mirror}")],
        },
    );
    let client = RegistryClient::new(config).unwrap();
    let r = Reference::parse(&format!("{host}/team/app:v1")).unwrap();
    for creds in [
        Credentials {
            username: "user".into(),
            password: "pass".into(),
            ..Default::default()
        },
        Credentials {
            registry_token: "RGT".into(),
            ..Default::default()
        },
    ] {
        let got = client.session(&r, &creds).manifest("v1").await.unwrap();
        assert_eq!(got.digest, Digest::of(MANIFEST));
    }
    let log = mirror_log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("[]")), "{log:?}");
}

/// A token realm in plain HTTP on another host gets no credentials: the
/// pull fails and says why, before connecting there.
#[tokio::test]
async fn credentials_never_go_to_a_plain_http_token_realm() {
    let (port, _) = serve(|_, _| {
        let challenge = r#"Bearer realm="http://auth.invalid/token",service="reg""#;
        (
            401,
            vec![("WWW-Authenticate".into(), challenge.into())],
            vec![],
        )
    });
    for creds in [
        Credentials {
            username: "user".into(),
            password: "pass".into(),
            ..Default::default()
        },
        Credentials {
            identity_token: "RT".into(),
            ..Default::default()
        },
    ] {
        let e = fetch(port, creds).await.unwrap_err();
        assert!(e.contains("credentials go only over HTTPS"), "{e}");
    }
}
