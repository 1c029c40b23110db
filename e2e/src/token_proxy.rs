//! Bearer-token authentication in front of the real test registry, as
//! Docker Hub and most public registries do it: an HTTP/1.1 proxy on
//! loopback that answers every `/v2/` request without a valid token with
//! 401 and a `Bearer realm=...,service=...,scope=...` challenge, hands out
//! tokens at its realm (`/token`) for HTTP Basic credentials, and passes
//! requests with a valid token through to the registry. Each token is good
//! for a few requests only, so a pull has to fetch fresh ones on the way
//! (a token expiring mid-pull).

use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use crate::proxy::{Server, forward, read_head};
use crate::registry::base64_encode;

pub struct TokenProxy {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: String,
    /// `Basic <base64 user:password>`, the only credentials the realm takes.
    basic: String,
    uses_per_token: u32,
    /// Issued tokens and the uses each has left.
    tokens: Mutex<Vec<(String, u32)>>,
    /// The `scope` of each token request, in order.
    scopes: Mutex<Vec<String>>,
    port: u16,
}

impl TokenProxy {
    /// Proxies to `upstream` (`host:port`); its realm issues tokens for
    /// `user`/`password`, each good for `uses_per_token` requests.
    pub fn start(
        upstream: &str,
        user: &str,
        password: &str,
        uses_per_token: u32,
    ) -> io::Result<TokenProxy> {
        let listener = Server::bind()?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            basic: format!(
                "Basic {}",
                base64_encode(format!("{user}:{password}").as_bytes())
            ),
            uses_per_token,
            tokens: Mutex::new(Vec::new()),
            scopes: Mutex::new(Vec::new()),
            port,
        });
        let s = shared.clone();
        let server = Server::run(listener, move |conn| {
            let _ = serve(&s, conn);
        })?;
        Ok(TokenProxy { server, shared })
    }

    /// `127.0.0.1:PORT`: a loopback registry host, reached over plain HTTP.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.tokens).len()
    }

    /// The scope of each token request so far.
    pub fn scopes(&self) -> Vec<String> {
        lock(&self.shared.scopes).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn answer(client: &mut TcpStream, status: &str, headers: &str, body: &str) -> io::Result<()> {
    write!(
        client,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    let head = read_head(&mut BufReader::new(client.try_clone()?))?;
    let mut client = client;
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if let Some(query) = target.strip_prefix("/token") {
        if header(&head, "authorization") != Some(s.basic.as_str()) {
            return answer(&mut client, "401 Unauthorized", "", "");
        }
        let scope = query
            .trim_start_matches('?')
            .split('&')
            .find_map(|p| p.strip_prefix("scope="))
            .unwrap_or("")
            .replace("%3A", ":")
            .replace("%2F", "/");
        lock(&s.scopes).push(scope);
        let mut tokens = lock(&s.tokens);
        let token = format!("token-{}", tokens.len());
        tokens.push((token.clone(), s.uses_per_token));
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
        return answer(
            &mut client,
            "200 OK",
            "Content-Type: application/json\r\n",
            &body,
        );
    }
    let valid = header(&head, "authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| {
            let mut tokens = lock(&s.tokens);
            match tokens.iter_mut().find(|(tok, left)| tok == t && *left > 0) {
                Some((_, left)) => {
                    *left -= 1;
                    true
                }
                None => false,
            }
        });
    if !valid {
        // /v2/<name>/(manifests|blobs)/<ref>: the repository's pull scope.
        let repo = target
            .strip_prefix("/v2/")
            .and_then(|p| p.rsplit_once("/manifests/").or(p.rsplit_once("/blobs/")))
            .map(|(name, _)| name.to_string());
        let scope = repo
            .map(|r| format!(",scope=\"repository:{r}:pull\""))
            .unwrap_or_default();
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{}/token\",service=\"crius-test\"{scope}\r\n",
            s.port
        );
        return answer(&mut client, "401 Unauthorized", &challenge, "");
    }
    let (response, mut from_upstream) = forward(&s.upstream, &head)?;
    client.write_all(response.as_bytes())?;
    io::copy(&mut from_upstream, &mut client)?;
    Ok(())
}
