//! A minimal HTTP/1.1 client and parser over plain TCP: raw request paths reach the
//! server exactly as written (no client-side normalisation of `..`), and recorded
//! byte streams can be split back into requests and responses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed request or response.
#[derive(Clone, Debug)]
pub struct Message {
    /// `GET /path HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    /// The path of a request.
    pub fn path(&self) -> &str {
        self.start.split_whitespace().nth(1).unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one message at the start of `bytes`; `None` if incomplete. Returns the
/// message and the bytes it used. A response without a length ends at the end of
/// the stream, so it is complete only once `eof`.
pub fn parse_one(bytes: &[u8], is_response: bool, eof: bool) -> Option<(Message, usize)> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let start = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut m = Message {
        start,
        headers,
        body: Vec::new(),
    };
    let mut at = end + 4;
    let status = m.status();
    let no_body = is_response && (status / 100 == 1 || status == 204 || status == 304);
    if no_body {
        return Some((m, at));
    }
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = at + find(&bytes[at..], b"\r\n")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&bytes[at..line_end])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            at = line_end + 2;
            if size == 0 {
                let trailer_end = at + find(&bytes[at..], b"\r\n")?;
                return Some((m, trailer_end + 2));
            }
            if bytes.len() < at + size + 2 {
                return None;
            }
            m.body.extend_from_slice(&bytes[at..at + size]);
            at += size + 2;
        }
    }
    let len: usize = match m.header("content-length") {
        Some(v) => v.parse().ok()?,
        None if is_response && eof => bytes.len() - at, // until close
        None if is_response => return None,
        None => 0,
    };
    if bytes.len() < at + len {
        return None;
    }
    m.body = bytes[at..at + len].to_vec();
    Some((m, at + len))
}

/// Every complete message in a recorded stream, in order.
pub fn parse_all(mut bytes: &[u8], is_response: bool) -> Vec<Message> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match parse_one(bytes, is_response, true) {
            Some((m, used)) if used > 0 => {
                out.push(m);
                bytes = &bytes[used..];
            }
            _ => break,
        }
    }
    out
}

/// Sends one request (`Connection: close`) and reads the whole response. The body is
/// written from another thread while the response is read, so a server that answers
/// early (413) is heard even if it stops reading.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut writer = stream.try_clone()?;
    let body = body.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    // Read until one whole response is in (a server may keep the connection open).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut eof = false;
    while parse_one(&buf, true, eof).is_none() && !eof {
        match stream.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => eof = true,
        }
    }
    drop(stream);
    let _ = sender.join();
    parse_one(&buf, true, eof).map(|(m, _)| m).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("incomplete response: {:?}", String::from_utf8_lossy(&buf)),
        )
    })
}

/// A form-encoded POST.
pub fn post_form(addr: &str, path: &str, form: &str, headers: &[(&str, &str)]) -> Message {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request(addr, "POST", path, &h, form.as_bytes()).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Message {
    request(addr, "GET", path, headers, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}
