use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn renewal_is_served_to_loopback_only_and_at_most_once_per_gap() {
    let now = Instant::now();
    for ok in ["127.0.0.1:5000", "127.42.0.9:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
        assert_eq!(may_renew(addr(ok), None, now), Ok(()), "{ok}");
    }
    for stranger in ["10.1.2.3:5000", "192.168.0.7:5000", "[fd00::1]:5000", "0.0.0.0:1"] {
        let (status, reason, message) = may_renew(addr(stranger), None, now).unwrap_err();
        assert_eq!((status, reason), (StatusCode::FORBIDDEN, "not_loopback"), "{stranger}");
        assert!(message.contains("loopback only") && message.contains("kubectl exec"), "{message}");
    }
    let local = addr("127.0.0.1:5000");
    let (status, reason, message) =
        may_renew(local, Some(now), now + Duration::from_secs(3)).unwrap_err();
    assert_eq!((status, reason), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(message.contains("try again in 8s"), "{message}");
    assert_eq!(may_renew(local, Some(now), now + ADMIN_RENEWAL_GAP), Ok(()));
}
