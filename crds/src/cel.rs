//! Builders for the CEL rules (`x-kubernetes-validations`) shared by the API types.
//!
//! Rules are built by functions so that one invariant is written once and reads the same
//! on every kind. Every rule carries a message that tells the reader what to fix.

use kube::core::{Message, Rule};

/// CEL: `e` is a dotted-quad IPv4 address.
pub fn is_ipv4(e: &str) -> String {
    format!("(isIP({e}) && ip({e}).family() == 4)")
}

/// CEL: the IPv4 address `e` as an integer, for ordering comparisons (guard with [`is_ipv4`]).
pub fn ipv4_int(e: &str) -> String {
    format!(
        "(int({e}.split('.')[0]) * 16777216 + int({e}.split('.')[1]) * 65536 + \
         int({e}.split('.')[2]) * 256 + int({e}.split('.')[3]))"
    )
}

/// CEL: `e` is an IPv4 CIDR with no host bits set.
pub fn is_ipv4_cidr(e: &str) -> String {
    format!("(isCIDR({e}) && cidr({e}).ip().family() == 4)")
}

/// A rule with a fixed message.
pub fn rule(expr: impl Into<String>, message: &str) -> Rule {
    Rule::new(expr).message(message)
}

/// A rule whose message is computed from the object (a CEL `messageExpression`).
pub fn rule_expr(expr: impl Into<String>, message_expression: impl Into<String>) -> Rule {
    Rule::new(expr).message(Message::Expression(message_expression.into()))
}

/// Field rule: the string is an IPv4 address.
pub fn ipv4_field(what: &str) -> Rule {
    rule_expr(
        is_ipv4("self"),
        format!(
            "'{what} ' + self + ' is not an IPv4 address; write it as four dotted numbers, e.g. 10.20.0.1'"
        ),
    )
}

/// Field rule: the value cannot change once set.
pub fn immutable(field: &str, what_to_do: &str) -> Rule {
    rule(
        "self == oldSelf",
        &format!("{field} is immutable: {what_to_do}"),
    )
}

/// Field rule: a MAC address in the usual colon-separated form.
pub fn mac_address(field: &str) -> Rule {
    rule_expr(
        r"self.matches('^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$')",
        format!(
            "'{field} ' + self + ' is not a MAC address; write six colon-separated hex bytes, e.g. 3c:ec:ef:12:34:56'"
        ),
    )
}

/// Field rule: a positive Kubernetes quantity such as `64Gi`.
pub fn positive_quantity(field: &str, example: &str) -> Rule {
    rule_expr(
        "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
        format!("'{field} ' + self + ' must be a positive quantity such as {example}'"),
    )
}

/// Field rule: an integer of at least one.
pub fn at_least_one(field: &str) -> Rule {
    rule(
        "self >= 1",
        &format!("{field} must be at least 1; leave it out for no minimum"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_int_indexes_all_four_octets() {
        let e = ipv4_int("x");
        for i in 0..4 {
            assert!(e.contains(&format!("x.split('.')[{i}]")), "{e}");
        }
    }
}
