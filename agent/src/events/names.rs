//! The contract's strings for the kernel's verdict, reason and hook codes
//! (CONTRACT section 3: `unmapped.tiergate.verdict`, `reason`, `hook`).

use agent_common::{
    HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6, REASON_DNS_PROXY_PORT,
    REASON_DNS_UNSERVED, REASON_EGRESS_RULE, REASON_FQDN, REASON_HOST, REASON_LOOPBACK,
    REASON_METADATA_PROXY, REASON_METADATA_SERVICE, REASON_METADATA_UNFILTERED,
    REASON_NO_MATCHING_RULE, REASON_SOCKET_TYPE, VERDICT_ALLOW, VERDICT_AUDIT_DENY,
};

/// `allow`, `deny` or `audit-deny`.
pub fn verdict_str(v: u8) -> &'static str {
    match v {
        VERDICT_ALLOW => "allow",
        VERDICT_AUDIT_DENY => "audit-deny",
        _ => "deny",
    }
}

/// Why the kernel decided as it did (`egress-rule`, `no-matching-rule`, ...).
pub fn reason_str(r: u8) -> &'static str {
    match r {
        REASON_LOOPBACK => "loopback",
        REASON_EGRESS_RULE => "egress-rule",
        REASON_NO_MATCHING_RULE => "no-matching-rule",
        REASON_METADATA_SERVICE => "metadata-service",
        REASON_HOST => "host",
        REASON_SOCKET_TYPE => "socket-type",
        REASON_FQDN => "fqdn",
        REASON_DNS_UNSERVED => "dns-unserved",
        REASON_DNS_PROXY_PORT => "dns-proxy-port",
        REASON_METADATA_PROXY => "metadata-proxy",
        REASON_METADATA_UNFILTERED => "metadata-unfiltered",
        _ => "unknown",
    }
}

/// The program that judged a connection.
pub fn hook_str(h: u8) -> &'static str {
    match h {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contract_strings() {
        assert_eq!(verdict_str(VERDICT_ALLOW), "allow");
        assert_eq!(verdict_str(agent_common::VERDICT_DENY), "deny");
        assert_eq!(verdict_str(VERDICT_AUDIT_DENY), "audit-deny");
        assert_eq!(reason_str(REASON_EGRESS_RULE), "egress-rule");
        assert_eq!(reason_str(REASON_NO_MATCHING_RULE), "no-matching-rule");
        assert_eq!(reason_str(REASON_METADATA_SERVICE), "metadata-service");
        assert_eq!(reason_str(REASON_LOOPBACK), "loopback");
    }
}
