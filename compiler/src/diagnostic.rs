//! Errors about input objects, precise enough for a user to find and fix the object:
//! file, document, kind, namespace/name and field.

use std::fmt::{self, Display, Formatter};

/// Where an object was read: a file (or `-`), the 1-based document in it (0: the file as a
/// whole), and for `kind: List` the 0-based item.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub source: String,
    pub document: usize,
    pub item: Option<usize>,
}

impl Origin {
    pub fn document(source: &str, document: usize) -> Origin {
        Origin {
            source: source.to_string(),
            document,
            item: None,
        }
    }

    pub fn item(&self, item: usize) -> Origin {
        Origin {
            item: Some(item),
            ..self.clone()
        }
    }
}

impl Display for Origin {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(&self.source)?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        match self.item {
            Some(i) => write!(f, ", items[{i}]"),
            None => Ok(()),
        }
    }
}

/// `Kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// The identity of a raw object, as far as it can be read; the namespace defaults to
    /// `default` as kubectl's does.
    pub fn of(kind: &str, value: &serde_yaml::Value) -> ObjectId {
        let meta = |key: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        ObjectId {
            kind: kind.to_string(),
            namespace: ObjectId::namespace_of(kind, meta("namespace")),
            name: meta("name").unwrap_or_else(|| "<unnamed>".into()),
        }
    }

    /// The namespace an object of `kind` is in: none ("") for a cluster-scoped kind, else
    /// the one it names or `default`.
    pub fn namespace_of(kind: &str, named: Option<String>) -> String {
        if kind == "ServiceCIDR" {
            return String::new();
        }
        named.unwrap_or_else(|| "default".into())
    }
}

impl Display for ObjectId {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind, self.name),
            namespace => write!(f, "{} {namespace}/{}", self.kind, self.name),
        }
    }
}

/// Whether a diagnostic rejects what it names, or only points something out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The document or object is rejected (left out, or its last good version kept).
    #[default]
    Error,
    /// Accepted as it is; worth a look (an unknown field, a skipped file).
    Warning,
}

impl Display for Severity {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One rejected (or, with [`Severity::Warning`], questionable) document or object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    pub object: Option<ObjectId>,
    /// The field path inside the object, e.g. `spec.ports[0].port`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        origin: Origin,
        object: Option<ObjectId>,
        field: Option<String>,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            origin,
            object,
            field,
            message,
        }
    }

    /// The same diagnostic as a warning: nothing is rejected.
    pub fn warning(self) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..self
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl Display for Diagnostic {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}
