//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! the holder renews the Lease well within its duration; another replica takes it over only
//! once it has not been renewed for a whole duration; every write carries the resourceVersion
//! it read, so two replicas racing for it cannot both win. The decision ([`decide`]) is pure;
//! [`try_lead`] does one round against the API.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The Lease the replicas compete for, in the operator's namespace.
pub const LEASE_NAME: &str = "genesis-operator";
/// A holder that has not renewed for this long has lost the lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and others retry).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What one replica does with the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Nobody holds it (or the holder let it lapse): take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// `holder` holds it and renewed recently: wait.
    Follow { holder: String },
}

/// The decision for replica `me`, given the Lease as read (None: no Lease yet).
pub fn decide(me: &str, lease: Option<&Lease>, now: SystemTime) -> LeaseAction {
    let spec = lease.and_then(|l| l.spec.as_ref());
    let holder = spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
    let Some(holder) = holder else { return LeaseAction::Acquire };
    if holder == me {
        return LeaseAction::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(1) as u64));
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| {
        SystemTime::UNIX_EPOCH + Duration::from_millis(t.0.as_millisecond().max(0) as u64)
    });
    match renewed {
        Some(at) if now < at + duration => LeaseAction::Follow { holder },
        _ => LeaseAction::Acquire,
    }
}

fn micro_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One round: read the Lease, and acquire or renew it if [`decide`] says so. Returns whether
/// `me` leads after it. Losing a race (409 Conflict) is not an error: someone else leads.
pub async fn try_lead(
    client: &kube::Client,
    namespace: &str,
    me: &str,
    now: SystemTime,
) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let current = api.get_opt(LEASE_NAME).await?;
    let action = decide(me, current.as_ref(), now);
    if let LeaseAction::Follow { .. } = action {
        return Ok(false);
    }
    let spec = current.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0)
        + i32::from(action == LeaseAction::Acquire && current.is_some());
    let acquired = if action == LeaseAction::Acquire {
        micro_time(now)
    } else {
        spec.acquire_time.as_ref().map_or_else(|| micro_time(now), |t| t.0.to_string())
    };
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {
            "name": LEASE_NAME, "namespace": namespace,
            "resourceVersion": current.as_ref().and_then(|l| l.metadata.resource_version.clone()),
        },
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": LEASE_DURATION.as_secs(),
            "acquireTime": acquired,
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    let written = match current {
        None => api.create(&PostParams::default(), &lease).await,
        Some(_) => api.replace(LEASE_NAME, &PostParams::default(), &lease).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (graceful shutdown) so another replica takes over at once instead of
/// after a whole duration.
pub async fn release(client: &kube::Client, namespace: &str, me: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(me))
    else {
        return Ok(());
    };
    spec.holder_identity = None;
    match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits until `me` leads, then keeps renewing in the background. The returned future
/// completes if the lease is lost (not renewed for a whole duration): the caller must stop
/// reconciling then, as another replica may already have started.
pub async fn lead(
    client: kube::Client,
    namespace: String,
    me: String,
) -> impl std::future::Future<Output = ()> {
    loop {
        match try_lead(&client, &namespace, &me, SystemTime::now()).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the leader Lease; retrying"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
    tracing::info!(%me, "leading");
    async move {
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match try_lead(&client, &namespace, &me, SystemTime::now()).await {
                Ok(true) => last_renewal = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(%me, "another replica took the leader Lease");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
            }
            if last_renewal.elapsed() >= LEASE_DURATION {
                tracing::error!(%me, "the leader Lease lapsed (the API was unreachable)");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::FakeApi;

    const NS: &str = "genesis-system";

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn one_leader_at_a_time_and_a_takeover_only_after_the_lease_lapses() {
        let api = FakeApi::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = api.client();
            assert!(try_lead(&client, NS, "a", t(0)).await.unwrap(), "a takes the free lease");
            assert!(!try_lead(&client, NS, "b", t(1)).await.unwrap(), "b follows");
            assert!(try_lead(&client, NS, "a", t(5)).await.unwrap(), "a renews");
            // Within a duration of a's last renewal, b still follows.
            assert!(!try_lead(&client, NS, "b", t(5 + 14)).await.unwrap());
            // a stops renewing (crashed): after a full duration b takes over, once.
            assert!(try_lead(&client, NS, "b", t(5 + 16)).await.unwrap());
            assert!(!try_lead(&client, NS, "a", t(5 + 17)).await.unwrap(), "a now follows");
            let lease = api.get("/apis/coordination.k8s.io/v1/namespaces/genesis-system/leases/genesis-operator").unwrap();
            assert_eq!(lease["spec"]["holderIdentity"], "b");
            assert_eq!(lease["spec"]["leaseTransitions"], 1);
        });
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let api = FakeApi::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = api.client();
            assert!(try_lead(&client, NS, "a", t(0)).await.unwrap());
            release(&client, NS, "b").await.unwrap();
            assert!(!try_lead(&client, NS, "b", t(1)).await.unwrap(), "b cannot release a's");
            release(&client, NS, "a").await.unwrap();
            assert!(try_lead(&client, NS, "b", t(1)).await.unwrap(), "no waiting for the lapse");
        });
    }

    #[test]
    fn two_replicas_racing_for_the_same_version_cannot_both_win() {
        let api = FakeApi::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = api.client();
            assert!(try_lead(&client, NS, "a", t(0)).await.unwrap());
            // Both read the lapsed lease; the first write wins, the second gets a conflict.
            let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
            let read = leases.get(LEASE_NAME).await.unwrap();
            assert_eq!(decide("b", Some(&read), t(30)), LeaseAction::Acquire);
            assert_eq!(decide("c", Some(&read), t(30)), LeaseAction::Acquire);
            assert!(try_lead(&client, NS, "b", t(30)).await.unwrap());
            let mut stale = read.clone();
            stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
            let e = leases.replace(LEASE_NAME, &PostParams::default(), &stale).await.unwrap_err();
            assert!(matches!(e, kube::Error::Api(ref s) if s.code == 409), "{e}");
        });
    }
}
