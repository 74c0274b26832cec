//! A small blocking HTTP/1.1 client for the sidecars' admin and app APIs on loopback. One
//! request per connection (`Connection: close`), bounded by timeouts, errors in words.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One request; (status, body). The read timeout bounds the whole answer.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    read_timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr} is not host:port: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    s.set_read_timeout(Some(read_timeout)).map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .and_then(|()| s.write_all(body))
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("{addr}: {e}"))?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(format!("{addr}: not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = resp[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16) else {
            break;
        };
        if size == 0 || b.len() < pos + 4 + size {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 4 + size..];
    }
    out
}

/// GET `path` as JSON (admin reads answer quickly).
pub fn get_json(addr: &str, path: &str) -> Result<Value, String> {
    let (status, body) = http(addr, "GET", path, b"", Duration::from_secs(5))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{addr}{path}: answer is not JSON ({e})"))?;
    // `/readyz` answers 503 with its checks when unhealthy: still a useful answer.
    if status != 200 && !(path == "/readyz" && status == 503) {
        return Err(format!("{addr}{path}: {status} {}", value["error"].as_str().unwrap_or("")));
    }
    Ok(value)
}

/// POST `body`; (status, JSON answer).
pub fn post_json(
    addr: &str,
    path: &str,
    body: &[u8],
    read_timeout: Duration,
) -> Result<(u16, Value), String> {
    let (status, body) = http(addr, "POST", path, body, read_timeout)?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The Prometheus text of a member, as (series, value) pairs.
pub fn metrics(addr: &str) -> Result<Vec<(String, f64)>, String> {
    let (status, body) = http(addr, "GET", "/metrics", b"", Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("{addr}/metrics: {status}"));
    }
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The sum of every series of metric `name` (any labels).
pub fn metric_sum(series: &[(String, f64)], name: &str) -> f64 {
    series
        .iter()
        .filter(|(s, _)| s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_truncated_ones_stop_cleanly() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"5\r\nab"), b"");
        assert_eq!(dechunk(b"zz\r\nab"), b"");
    }

    #[test]
    fn metric_sums_match_whole_names_only() {
        let s = vec![
            ("genesis_sidecar_links".to_owned(), 3.0),
            ("genesis_sidecar_links_total".to_owned(), 100.0),
            ("genesis_sidecar_dials_total{result=\"ok\"}".to_owned(), 2.0),
            ("genesis_sidecar_dials_total{result=\"failed\"}".to_owned(), 1.0),
        ];
        assert_eq!(metric_sum(&s, "genesis_sidecar_links"), 3.0);
        assert_eq!(metric_sum(&s, "genesis_sidecar_dials_total"), 3.0);
    }
}
