//! Conversions between the resources' types and the trust core's, so one definition (the trust
//! core's) decides behaviour and defaults, and every match is exhaustive: a new role, verb or
//! reason added on one side fails to compile until the other side knows it.

use genesis_trust as trust;

use crate::certificate::RevocationReason;
use crate::common::{KeyAlgorithm, MemberRole};
use crate::mesh_network::{Rbac, RbacRule, ScopeKind, Verb};

impl From<MemberRole> for trust::Role {
    fn from(r: MemberRole) -> Self {
        match r {
            MemberRole::Anchor => trust::Role::Anchor,
            MemberRole::Client => trust::Role::Client,
            MemberRole::Operator => trust::Role::Operator,
            MemberRole::Admin => trust::Role::Admin,
        }
    }
}

impl From<trust::Role> for MemberRole {
    fn from(r: trust::Role) -> Self {
        match r {
            trust::Role::Anchor => MemberRole::Anchor,
            trust::Role::Client => MemberRole::Client,
            trust::Role::Operator => MemberRole::Operator,
            trust::Role::Admin => MemberRole::Admin,
        }
    }
}

impl From<Verb> for trust::Verb {
    fn from(v: Verb) -> Self {
        match v {
            Verb::PolicyUpdate => trust::Verb::PolicyUpdate,
            Verb::Revoke => trust::Verb::Revoke,
            Verb::Drain => trust::Verb::Drain,
            Verb::Shutdown => trust::Verb::Shutdown,
            Verb::RouteReset => trust::Verb::RouteReset,
            Verb::LogLevel => trust::Verb::LogLevel,
        }
    }
}

impl From<trust::Verb> for Verb {
    fn from(v: trust::Verb) -> Self {
        match v {
            trust::Verb::PolicyUpdate => Verb::PolicyUpdate,
            trust::Verb::Revoke => Verb::Revoke,
            trust::Verb::Drain => Verb::Drain,
            trust::Verb::Shutdown => Verb::Shutdown,
            trust::Verb::RouteReset => Verb::RouteReset,
            trust::Verb::LogLevel => Verb::LogLevel,
        }
    }
}

impl From<ScopeKind> for trust::ScopeKind {
    fn from(s: ScopeKind) -> Self {
        match s {
            ScopeKind::Network => trust::ScopeKind::Network,
            ScopeKind::Node => trust::ScopeKind::Node,
            ScopeKind::OwnNode => trust::ScopeKind::OwnNode,
            ScopeKind::Role => trust::ScopeKind::Role,
        }
    }
}

impl From<trust::ScopeKind> for ScopeKind {
    fn from(s: trust::ScopeKind) -> Self {
        match s {
            trust::ScopeKind::Network => ScopeKind::Network,
            trust::ScopeKind::Node => ScopeKind::Node,
            trust::ScopeKind::OwnNode => ScopeKind::OwnNode,
            trust::ScopeKind::Role => ScopeKind::Role,
        }
    }
}

impl From<&Rbac> for trust::RbacPolicy {
    fn from(rbac: &Rbac) -> Self {
        let rules = rbac
            .rules
            .iter()
            .map(|r| trust::RbacRule {
                name: r.name.clone(),
                roles: r.roles.iter().map(|&x| x.into()).collect(),
                verbs: r.verbs.iter().map(|&x| x.into()).collect(),
                scopes: r.scopes.iter().map(|&x| x.into()).collect(),
            })
            .collect();
        trust::RbacPolicy { rules }
    }
}

impl From<&trust::RbacPolicy> for Rbac {
    fn from(policy: &trust::RbacPolicy) -> Self {
        let rules = policy
            .rules
            .iter()
            .map(|r| RbacRule {
                name: r.name.clone(),
                roles: r.roles.iter().map(|&x| x.into()).collect(),
                verbs: r.verbs.iter().map(|&x| x.into()).collect(),
                scopes: r.scopes.iter().map(|&x| x.into()).collect(),
            })
            .collect();
        Rbac { rules }
    }
}

impl From<RevocationReason> for trust::RevocationReason {
    fn from(r: RevocationReason) -> Self {
        match r {
            RevocationReason::Unspecified => trust::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => trust::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => trust::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => trust::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => trust::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => trust::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl From<KeyAlgorithm> for trust::KeyAlgorithm {
    fn from(k: KeyAlgorithm) -> Self {
        match k {
            KeyAlgorithm::EcdsaP256 => trust::KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Ed25519 => trust::KeyAlgorithm::Ed25519,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_rbac_default_is_the_trust_core_default_and_round_trips() {
        let crd = Rbac::default();
        let policy = trust::RbacPolicy::from(&crd);
        assert_eq!(policy, trust::RbacPolicy::default());
        assert_eq!(Rbac::from(&policy), crd);
        assert!(!crd.rules.is_empty());
    }

    #[test]
    fn every_role_and_verb_converts_both_ways() {
        for role in trust::Role::ALL {
            assert_eq!(trust::Role::from(MemberRole::from(role)), role);
        }
        for verb in trust::Verb::ALL {
            assert_eq!(trust::Verb::from(Verb::from(verb)), verb);
        }
    }
}
