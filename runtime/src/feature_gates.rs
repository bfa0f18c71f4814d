//! Feature gates as kube-proxy takes them: `--feature-gates Name=true,Other=false` and the
//! `featureGates` map of a KubeProxyConfiguration. svc-nft acts on the gates that change what
//! a proxy programs; any other is named in a warning and ignored (kube-proxy refuses to start
//! on a gate it does not know, but a cluster often hands every component the same list).

use svc_nft_compiler::NodeFacts;

/// One gate: its name and whether it is on.
pub type Gate = (String, bool);

/// The gates svc-nft acts on.
const KNOWN: &[&str] = &["AllowServiceExternalIPs"];

/// `Name=value`, the value as Go's strconv.ParseBool reads it (kube-proxy's parser).
pub fn parse(text: &str) -> Result<Gate, String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected Name=true|false"))?;
    let on = match value.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        other => return Err(format!("{name}: {other:?} is not true or false")),
    };
    Ok((name.trim().to_string(), on))
}

/// Set `facts` from `gates` (the last word on a gate wins); returns a warning for each gate
/// svc-nft does not act on.
pub fn apply(gates: &[Gate], facts: &mut NodeFacts) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, on) in gates {
        match name.as_str() {
            "AllowServiceExternalIPs" => facts.allow_external_ips = *on,
            _ => warnings.push(format!(
                "feature gate {name} is not one svc-nft acts on ({}): ignored",
                KNOWN.join(", ")
            )),
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_read_as_kube_proxy_reads_them() {
        assert_eq!(
            parse("AllowServiceExternalIPs=false"),
            Ok(("AllowServiceExternalIPs".into(), false))
        );
        assert_eq!(parse("X=T"), Ok(("X".into(), true)));
        assert!(parse("X").is_err() && parse("X=maybe").is_err());
        let mut facts = NodeFacts::default();
        let gates = [
            parse("AllowServiceExternalIPs=false").unwrap(),
            parse("Other=true").unwrap(),
        ];
        let warnings = apply(&gates, &mut facts);
        assert!(!facts.allow_external_ips);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("Other"), "{warnings:?}");
    }
}
