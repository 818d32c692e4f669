//! Kubernetes label selectors (`matchLabels`, `matchExpressions`) and their matching.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Kubernetes semantics: every matchLabels pair and every expression must hold.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator {
                    Operator::In => have.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => have.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => have.is_some(),
                    Operator::DoesNotExist => have.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_saphyr::from_str(yaml).expect(yaml)
    }

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let node = labels(&[("store", "store1"), ("env", "qa")]);
        let table: &[(&str, bool)] = &[
            ("{}", true),
            ("matchLabels: {store: store1}", true),
            ("matchLabels: {store: store1, env: prod}", false),
            ("matchExpressions: [{key: env, operator: In, values: [qa, prod]}]", true),
            ("matchExpressions: [{key: env, operator: In, values: [prod]}]", false),
            ("matchExpressions: [{key: env, operator: NotIn, values: [prod]}]", true),
            ("matchExpressions: [{key: region, operator: NotIn, values: [eu]}]", true),
            ("matchExpressions: [{key: store, operator: Exists}]", true),
            ("matchExpressions: [{key: region, operator: Exists}]", false),
            ("matchExpressions: [{key: region, operator: DoesNotExist}]", true),
            ("{matchLabels: {env: qa}, matchExpressions: [{key: store, operator: DoesNotExist}]}", false),
        ];
        for (yaml, want) in table {
            assert_eq!(selector(yaml).matches(&node), *want, "{yaml}");
        }
    }
}
