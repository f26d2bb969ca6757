//! A tiny blocking HTTP/1.1 client for the safekeeper's API: one request per connection
//! (`Connection: close`), any method, an optional JSON body and bearer token, the answer's
//! status, headers and body (JSON parsed when it is JSON).
//!
//! Owns: [`Api`]. Must never: follow redirects or retry (tests assert exact answers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The API of one safekeeper, with an optional bearer token sent on every request.
#[derive(Clone, Debug)]
pub struct Api {
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl Api {
    /// The API on `127.0.0.1:port`, without a token.
    pub fn new(port: u16) -> Api {
        Api { port, token: None }
    }

    /// The same API with `token` sent on every request.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            port: self.port,
            token: Some(token.to_string()),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.request("GET", path, None, b"")
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.request("DELETE", path, None, b"")
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.request(
            "POST",
            path,
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    }

    /// Any request; `content_type` is sent when given (with a Content-Length always).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        // The server may answer (413) and close before reading a large body whole.
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}
