//! A blocking face on hyper's HTTP/1.1 client (already the sidecar's HTTP stack) for the
//! sidecars' admin and app APIs: one request per connection, one deadline for the whole
//! answer (connect, send, every byte of the body), errors in words.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One request to `addr` (host:port; a name is resolved); (status, body). `deadline` bounds
/// the whole exchange.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("cannot reach {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("{addr}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| format!("{addr}: {e}"))?;
        Ok::<_, String>((status, bytes.to_bytes().to_vec()))
    };
    crate::cluster::block_on(async {
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| format!("{addr} did not answer {method} {path} within {deadline:?}"))?
    })?
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
    fn the_deadline_bounds_the_whole_answer_and_chunked_bodies_arrive_whole() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            // First: a chunked answer. Second: a server that trickles a byte every 300 ms,
            // so no single read times out but the whole answer would take seconds.
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 1024]);
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
            drop(s);
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n");
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(300));
                if s.write_all(b"x").is_err() {
                    break;
                }
            }
        });
        assert_eq!(
            http(&addr, "GET", "/", b"", Duration::from_secs(5)).unwrap(),
            (200, b"abcde".to_vec())
        );
        let start = std::time::Instant::now();
        let e = http(&addr, "GET", "/", b"", Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("did not answer GET / within 1s"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        // A name, not only an address.
        let e = http("localhost:1", "GET", "/", b"", Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("cannot reach localhost:1"), "{e}");
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
