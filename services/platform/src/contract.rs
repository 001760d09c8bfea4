//! The contract says what is valid: the rules the protos declare on request
//! fields, enforced from the descriptor set so that the services, the gateway's
//! OpenAPI document and any generated client read the same ones.
//!
//! A rule is a `buf.validate` annotation (protovalidate's names and numbers; the
//! subset shopmesh uses is declared in proto/buf/validate/validate.proto) or
//! `google.api.field_behavior = REQUIRED`, which counts as `required` so that a
//! field says it once. Every handler calls [`check`] on its request before
//! anything else; what a rule cannot say (a SKU twice in one order, say) stays in
//! the service's `TryFrom`.
//!
//! The evaluator covers exactly the rule kinds that validate.proto declares:
//! adding a kind there without adding it here fails [`Contract::compile`], which
//! a unit test runs over every shopmesh message.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, ReflectMessage, Value};
use shop_proto::buf::validate::{
    FieldRules, Ignore, Int32Rules, Int64Rules, RepeatedRules, StringRules, UInt32Rules,
    field_rules, int32_rules, int64_rules, string_rules, u_int32_rules,
};

use crate::error::{ApiError, FieldViolation};

/// Why the rules of a message could not be compiled: a rule that does not fit
/// its field's type, or a pattern that is not a regular expression.
#[derive(Debug, thiserror::Error)]
#[error("rules of {field} cannot be enforced: {problem}")]
pub struct RuleError {
    field: String,
    problem: String,
}

/// The buf.validate rules of one field, if it declares any.
pub fn field_rules(field: &FieldDescriptor) -> Option<FieldRules> {
    let extension = field
        .parent_pool()
        .get_extension_by_name("buf.validate.field")?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    options
        .get_extension(&extension)
        .as_message()?
        .transcode_to::<FieldRules>()
        .ok()
}

/// `google.api.FieldBehavior` values (google/api/field_behavior.proto).
pub mod behavior {
    pub const REQUIRED: i32 = 2;
    pub const OUTPUT_ONLY: i32 = 3;
}

/// The `google.api.field_behavior` values the proto gives `field`.
pub fn field_behaviors(field: &FieldDescriptor) -> Vec<i32> {
    let Some(extension) = field
        .parent_pool()
        .get_extension_by_name("google.api.field_behavior")
    else {
        return Vec::new();
    };
    let options = field.options();
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    options
        .get_extension(&extension)
        .as_list()
        .map(|list| list.iter().filter_map(Value::as_enum_number).collect())
        .unwrap_or_default()
}

/// Whether the field must be set: `google.api.field_behavior = REQUIRED` or
/// `(buf.validate.field).required`. For a field without presence, "set" means
/// not the zero value: a non-empty string or list, a non-zero number.
pub fn is_required(field: &FieldDescriptor, rules: Option<&FieldRules>) -> bool {
    field_behaviors(field).contains(&behavior::REQUIRED)
        || rules.is_some_and(|r| r.required == Some(true))
}

/// Whether a client must send the field: it is required, or leaving it out
/// (its zero value, for a field without presence) breaks one of its rules,
/// as `""` breaks a pattern that wants three letters.
pub fn must_be_sent(field: &FieldDescriptor) -> bool {
    let Ok(Some(check)) = FieldCheck::compile(field) else {
        return false;
    };
    let mut out = Vec::new();
    check.evaluate(
        &DynamicMessage::new(field.parent_message().clone()),
        "",
        &mut out,
    );
    !out.is_empty()
}

/// The compiled rules of every message in a descriptor pool.
#[derive(Debug)]
pub struct Contract {
    pool: DescriptorPool,
    messages: HashMap<String, Vec<FieldCheck>>,
}

/// The contract of the shopmesh protos.
static SHOPMESH: LazyLock<Contract> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built by shop-proto decodes");
    Contract::compile(pool).expect("the shopmesh protos' rules compile (a unit test checks them)")
});

/// Checks a request against the rules its message declares: INVALID_ARGUMENT
/// with one `google.rpc.BadRequest` violation per broken rule.
pub fn check<M: prost::Message + prost::Name>(message: &M) -> Result<(), ApiError> {
    SHOPMESH.check(&M::full_name(), &message.encode_to_vec())
}

impl Contract {
    pub fn compile(pool: DescriptorPool) -> Result<Self, RuleError> {
        let mut messages = HashMap::new();
        for message in pool.all_messages() {
            let checks = message
                .fields()
                .map(|field| FieldCheck::compile(&field))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            messages.insert(message.full_name().to_owned(), checks);
        }
        Ok(Self { pool, messages })
    }

    /// Checks the encoded message `full_name`.
    pub fn check(&self, full_name: &str, encoded: &[u8]) -> Result<(), ApiError> {
        let Some(descriptor) = self.pool.get_message_by_name(full_name) else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "message {full_name} is not in the contract"
            )));
        };
        let message = DynamicMessage::decode(descriptor, encoded)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("re-decoding {full_name}: {err}")))?;
        let violations = self.violations(&message);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidFields(violations))
        }
    }

    /// Every rule `message` breaks, nested messages included, in field order.
    pub fn violations(&self, message: &DynamicMessage) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        self.walk(message, "", &mut out);
        out
    }

    fn walk(&self, message: &DynamicMessage, prefix: &str, out: &mut Vec<FieldViolation>) {
        let descriptor = message.descriptor();
        for check in self
            .messages
            .get(descriptor.full_name())
            .into_iter()
            .flatten()
        {
            let path = format!("{prefix}{}", check.field.name());
            check.evaluate(message, &path, out);
        }
        // Nested messages carry rules of their own.
        for field in descriptor.fields() {
            if !matches!(field.kind(), Kind::Message(_)) || field.is_map() {
                continue;
            }
            if !message.has_field(&field) {
                continue;
            }
            match &*message.get_field(&field) {
                Value::Message(nested) => {
                    self.walk(nested, &format!("{prefix}{}.", field.name()), out);
                }
                Value::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Message(nested) = item {
                            self.walk(nested, &format!("{prefix}{}[{i}].", field.name()), out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The rules of one field, compiled.
#[derive(Debug)]
struct FieldCheck {
    field: FieldDescriptor,
    required: bool,
    ignore: Ignore,
    value: ValueCheck,
}

impl FieldCheck {
    fn compile(field: &FieldDescriptor) -> Result<Option<Self>, RuleError> {
        let rules = field_rules(field);
        let required = is_required(field, rules.as_ref());
        if rules.is_none() && !required {
            return Ok(None);
        }
        let rules = rules.unwrap_or_default();
        let ignore = rules.ignore();
        let value = ValueCheck::compile(field, rules.r#type.as_ref(), field.is_list())?;
        Ok(Some(Self {
            field: field.clone(),
            required,
            ignore,
            value,
        }))
    }

    fn evaluate(&self, message: &DynamicMessage, path: &str, out: &mut Vec<FieldViolation>) {
        let present = message.has_field(&self.field);
        if self.required && !present {
            out.push(violation(path, "is required"));
            return;
        }
        let skip = match self.ignore {
            Ignore::Always => true,
            Ignore::IfZeroValue => !present,
            Ignore::Unspecified => false,
        };
        if skip {
            return;
        }
        self.value
            .evaluate(&message.get_field(&self.field), path, out);
    }
}

/// Rules on a value, by the field's type.
#[derive(Debug)]
enum ValueCheck {
    None,
    String(StringCheck),
    Integer(IntegerRules),
    Enum {
        defined_only: bool,
        /// `const`, `in` and `not_in`, widened once at compile.
        sets: IntegerRules,
        descriptor: prost_reflect::EnumDescriptor,
    },
    Repeated {
        rules: RepeatedRules,
        items: Box<ValueCheck>,
    },
}

fn rule_error(field: &FieldDescriptor, problem: impl Into<String>) -> RuleError {
    RuleError {
        field: field.full_name().to_owned(),
        problem: problem.into(),
    }
}

impl ValueCheck {
    /// `as_list`: whether the rules are for the whole repeated field (else for
    /// one of its items, or a singular field).
    fn compile(
        field: &FieldDescriptor,
        rules: Option<&field_rules::Type>,
        as_list: bool,
    ) -> Result<Self, RuleError> {
        use field_rules::Type;
        let Some(rules) = rules else {
            return Ok(Self::None);
        };
        if as_list {
            let Type::Repeated(repeated) = rules else {
                return Err(rule_error(field, "a repeated field takes repeated rules"));
            };
            let items = repeated.items.as_ref().and_then(|i| i.r#type.as_ref());
            return Ok(Self::Repeated {
                rules: repeated.as_ref().clone(),
                items: Box::new(Self::compile(field, items, false)?),
            });
        }
        let check = match (rules, field.kind()) {
            (Type::String(rules), Kind::String) => {
                Self::String(StringCheck::compile(field, rules)?)
            }
            (Type::Int32(rules), Kind::Int32 | Kind::Sint32 | Kind::Sfixed32) => {
                Self::Integer(IntegerRules::from_int32(rules))
            }
            (Type::Int64(rules), Kind::Int64 | Kind::Sint64 | Kind::Sfixed64) => {
                Self::Integer(IntegerRules::from_int64(rules))
            }
            (Type::Uint32(rules), Kind::Uint32 | Kind::Fixed32) => {
                Self::Integer(IntegerRules::from_uint32(rules))
            }
            (Type::Enum(rules), Kind::Enum(descriptor)) => Self::Enum {
                defined_only: rules.defined_only == Some(true),
                sets: IntegerRules {
                    r#const: rules.r#const.map(i128::from),
                    r#in: rules.r#in.iter().map(|&v| i128::from(v)).collect(),
                    not_in: rules.not_in.iter().map(|&v| i128::from(v)).collect(),
                    ..IntegerRules::default()
                },
                descriptor,
            },
            (rules, kind) => {
                return Err(rule_error(
                    field,
                    format!("{} rules do not apply to {kind:?}", rule_kind(rules)),
                ));
            }
        };
        Ok(check)
    }

    fn evaluate(&self, value: &Value, path: &str, out: &mut Vec<FieldViolation>) {
        match (self, value) {
            (Self::None, _) => {}
            (Self::String(check), Value::String(s)) => check.evaluate(s, path, out),
            (Self::Integer(check), value) => {
                let number = match value {
                    Value::I32(n) => i128::from(*n),
                    Value::I64(n) => i128::from(*n),
                    Value::U32(n) => i128::from(*n),
                    _ => return,
                };
                check.evaluate(number, path, out);
            }
            (
                Self::Enum {
                    defined_only,
                    sets,
                    descriptor,
                },
                Value::EnumNumber(n),
            ) => {
                if *defined_only && descriptor.get_value(*n).is_none() {
                    let name = descriptor.name();
                    out.push(violation(path, format!("must be a defined {name} value")));
                }
                sets.evaluate(i128::from(*n), path, out);
            }
            (Self::Repeated { rules, items }, Value::List(list)) => {
                let len = list.len() as u64;
                if let Some(min) = rules.min_items.filter(|&min| len < min) {
                    out.push(violation(
                        path,
                        format!("must have at least {min} {}", plural(min, "item")),
                    ));
                }
                if let Some(max) = rules.max_items.filter(|&max| len > max) {
                    out.push(violation(
                        path,
                        format!("must have at most {max} {}", plural(max, "item")),
                    ));
                }
                if rules.unique == Some(true) {
                    for (i, item) in list.iter().enumerate() {
                        if list[..i].contains(item) {
                            out.push(violation(
                                &format!("{path}[{i}]"),
                                "repeats an earlier item",
                            ));
                        }
                    }
                }
                for (i, item) in list.iter().enumerate() {
                    items.evaluate(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
}

fn rule_kind(rules: &field_rules::Type) -> &'static str {
    use field_rules::Type;
    match rules {
        Type::Int32(_) => "int32",
        Type::Int64(_) => "int64",
        Type::Uint32(_) => "uint32",
        Type::String(_) => "string",
        Type::Enum(_) => "enum",
        Type::Repeated(_) => "repeated",
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn violation(path: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: path.to_owned(),
        description: description.into(),
    }
}

/// String rules, the pattern compiled once.
#[derive(Debug)]
struct StringCheck {
    rules: StringRules,
    pattern: Option<regex::Regex>,
}

impl StringCheck {
    fn compile(field: &FieldDescriptor, rules: &StringRules) -> Result<Self, RuleError> {
        let pattern = rules
            .pattern
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|err| rule_error(field, format!("pattern: {err}")))?;
        Ok(Self {
            rules: rules.clone(),
            pattern,
        })
    }

    fn evaluate(&self, value: &str, path: &str, out: &mut Vec<FieldViolation>) {
        let rules = &self.rules;
        let mut push = |description: String| out.push(violation(path, description));
        if let Some(expected) = rules.r#const.as_deref().filter(|&c| c != value) {
            push(format!("must be {expected:?}"));
        }
        let chars = value.chars().count() as u64;
        if let Some(min) = rules.min_len.filter(|&min| chars < min) {
            push(format!(
                "must be at least {min} {}",
                plural(min, "character")
            ));
        }
        if let Some(max) = rules.max_len.filter(|&max| chars > max) {
            push(format!(
                "must be at most {max} {}",
                plural(max, "character")
            ));
        }
        if let Some(pattern) = self.pattern.as_ref().filter(|p| !p.is_match(value)) {
            push(format!("must match {}", pattern.as_str()));
        }
        if !rules.r#in.is_empty() && !rules.r#in.iter().any(|v| v == value) {
            push(format!("must be one of {}", rules.r#in.join(", ")));
        }
        if rules.not_in.iter().any(|v| v == value) {
            push(format!("must not be {value:?}"));
        }
        match rules.well_known {
            Some(string_rules::WellKnown::Email(true)) if !is_email(value) => {
                push("must be an email address such as name@example.com".to_owned());
            }
            Some(string_rules::WellKnown::Uuid(true)) if !is_uuid(value) => {
                push("must be a UUID".to_owned());
            }
            _ => {}
        }
    }
}

/// The rules on an integer of any width, widened to i128.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IntegerRules {
    pub r#const: Option<i128>,
    /// Inclusive bounds (an exclusive `gt`/`lt` is turned into the next integer).
    pub min: Option<i128>,
    pub max: Option<i128>,
    pub r#in: Vec<i128>,
    pub not_in: Vec<i128>,
}

macro_rules! integer_check_from {
    ($name:ident, $rules:ty, $module:ident) => {
        fn $name(rules: &$rules) -> Self {
            use $module::{GreaterThan, LessThan};
            Self {
                r#const: rules.r#const.map(i128::from),
                min: rules.greater_than.map(|g| match g {
                    GreaterThan::Gt(v) => i128::from(v) + 1,
                    GreaterThan::Gte(v) => i128::from(v),
                }),
                max: rules.less_than.map(|l| match l {
                    LessThan::Lt(v) => i128::from(v) - 1,
                    LessThan::Lte(v) => i128::from(v),
                }),
                r#in: rules.r#in.iter().map(|&v| i128::from(v)).collect(),
                not_in: rules.not_in.iter().map(|&v| i128::from(v)).collect(),
            }
        }
    };
}

impl IntegerRules {
    integer_check_from!(from_int32, Int32Rules, int32_rules);
    integer_check_from!(from_int64, Int64Rules, int64_rules);
    integer_check_from!(from_uint32, UInt32Rules, u_int32_rules);

    fn evaluate(&self, value: i128, path: &str, out: &mut Vec<FieldViolation>) {
        let outside = match (self.min, self.max) {
            (Some(min), Some(max)) if !(min..=max).contains(&value) => {
                Some(format!("must be between {min} and {max}"))
            }
            (Some(min), None) if value < min => Some(format!("must be at least {min}")),
            (None, Some(max)) if value > max => Some(format!("must be at most {max}")),
            _ => None,
        };
        if let Some(description) = outside {
            out.push(violation(path, description));
        }
        numeric_sets(value, self.r#const, &self.r#in, &self.not_in, path, out);
    }
}

fn numeric_sets(
    value: i128,
    r#const: Option<i128>,
    r#in: &[i128],
    not_in: &[i128],
    path: &str,
    out: &mut Vec<FieldViolation>,
) {
    if let Some(expected) = r#const.filter(|&c| c != value) {
        out.push(violation(path, format!("must be {expected}")));
    }
    if !r#in.is_empty() && !r#in.contains(&value) {
        let list: Vec<String> = r#in.iter().map(i128::to_string).collect();
        out.push(violation(
            path,
            format!("must be one of {}", list.join(", ")),
        ));
    }
    if not_in.contains(&value) {
        out.push(violation(path, format!("must not be {value}")));
    }
}

/// A field's integer rules (int32, int64 or uint32), for documents such as OpenAPI.
pub fn integer_rules(rules: &FieldRules) -> Option<IntegerRules> {
    use field_rules::Type;
    match rules.r#type.as_ref()? {
        Type::Int32(r) => Some(IntegerRules::from_int32(r)),
        Type::Int64(r) => Some(IntegerRules::from_int64(r)),
        Type::Uint32(r) => Some(IntegerRules::from_uint32(r)),
        _ => None,
    }
}

/// The canonical hyphenated form, either case: 8-4-4-4-12 hex digits.
fn is_uuid(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// An address as the HTML standard's `type=email` input takes it (what
/// protovalidate's `email` rule means): a local part of letters, digits, dots
/// and `!#$%&'*+/=?^_`{|}~-`, an `@`, and a host name of dot-separated labels.
fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c));
    local_ok && is_hostname(domain)
}

fn is_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::MessageDescriptor;
    use shop_proto::{common, inventory, order, user};

    fn descriptor_of(full_name: &str) -> Option<MessageDescriptor> {
        SHOPMESH.pool.get_message_by_name(full_name)
    }

    fn fields(err: ApiError) -> Vec<(String, String)> {
        match err {
            ApiError::InvalidFields(v) => v.into_iter().map(|v| (v.field, v.description)).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    fn broken<M: prost::Message + prost::Name>(message: &M) -> Vec<String> {
        fields(check(message).expect_err("the message breaks a rule"))
            .into_iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect()
    }

    #[test]
    fn every_shopmesh_rule_compiles() {
        let pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let contract = Contract::compile(pool).expect("rules compile");
        let with_rules = contract.messages.values().filter(|c| !c.is_empty()).count();
        assert!(with_rules >= 15, "only {with_rules} messages have rules");
    }

    /// The shopmesh pool plus `edited.Probe`, whose one field `value` (of
    /// `field_type`) carries `rules` in its options.
    fn pool_with_probe(field_type: i32, rules: &FieldRules) -> DescriptorPool {
        use prost::encoding::{WireType, encode_key, encode_varint};
        fn len_field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
            encode_key(number, WireType::LengthDelimited, out);
            encode_varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
        // prost_types' options drop extensions, so the descriptor is written by hand.
        let mut options = Vec::new();
        len_field(1159, &prost::Message::encode_to_vec(rules), &mut options);
        let mut field = Vec::new();
        len_field(1, b"value", &mut field);
        prost::encoding::int32::encode(3, &1, &mut field);
        prost::encoding::int32::encode(4, &1, &mut field);
        prost::encoding::int32::encode(5, &field_type, &mut field);
        len_field(8, &options, &mut field);
        let mut message = Vec::new();
        len_field(1, b"Probe", &mut message);
        len_field(2, &field, &mut message);
        let mut file = Vec::new();
        len_field(1, b"edited/probe.proto", &mut file);
        len_field(2, b"edited", &mut file);
        len_field(3, b"buf/validate/validate.proto", &mut file);
        len_field(4, &message, &mut file);
        len_field(12, b"proto3", &mut file);
        let mut pool = DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET).expect("pool");
        pool.decode_file_descriptor_proto(file.as_slice())
            .expect("probe file");
        pool
    }

    #[test]
    fn a_rule_that_does_not_fit_its_field_is_refused_at_compile() {
        const TYPE_STRING: i32 = 9;
        const TYPE_INT64: i32 = 3;
        let int32_rules = FieldRules {
            r#type: Some(field_rules::Type::Int32(Int32Rules {
                r#const: Some(1),
                ..Default::default()
            })),
            ..Default::default()
        };
        let err = Contract::compile(pool_with_probe(TYPE_STRING, &int32_rules))
            .expect_err("int32 rules on a string field");
        assert_eq!(
            err.to_string(),
            "rules of edited.Probe.value cannot be enforced: int32 rules do not apply to string"
        );
        let bad_pattern = FieldRules {
            r#type: Some(field_rules::Type::String(StringRules {
                pattern: Some("([unclosed".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let err = Contract::compile(pool_with_probe(TYPE_STRING, &bad_pattern))
            .expect_err("a pattern that does not compile");
        assert!(err.to_string().contains("pattern:"), "{err}");
        let probe = Contract::compile(pool_with_probe(
            TYPE_INT64,
            &FieldRules {
                r#type: Some(field_rules::Type::Int64(Int64Rules {
                    less_than: Some(int64_rules::LessThan::Lt(10)),
                    greater_than: Some(int64_rules::GreaterThan::Gt(-10)),
                    ..Default::default()
                })),
                ..Default::default()
            },
        ))
        .expect("int64 rules on an int64 field");
        let descriptor = probe
            .pool
            .get_message_by_name("edited.Probe")
            .expect("probe");
        let mut message = DynamicMessage::new(descriptor);
        message.set_field_by_name("value", Value::I64(10));
        assert_eq!(
            probe.violations(&message),
            [violation("value", "must be between -9 and 9")]
        );
        message.set_field_by_name("value", Value::I64(9));
        assert!(probe.violations(&message).is_empty());
    }

    #[test]
    fn required_fields_name_themselves() {
        assert_eq!(
            broken(&inventory::CreateProductRequest::default()),
            [
                "sku: is required",
                "name: is required",
                "unit_price: is required"
            ]
        );
        assert_eq!(
            broken(&order::CreateOrderRequest::default()),
            ["lines: is required"]
        );
    }

    #[test]
    fn string_rules() {
        let mut register = user::RegisterRequest {
            email: "a@example.com".into(),
            password: "x".repeat(12),
            display_name: String::new(),
        };
        check(&register).expect("a valid registration");
        register.password = "short".into();
        register.email = "not an email".into();
        register.display_name = "tab\there".into();
        assert_eq!(
            broken(&register),
            [
                "email: must be an email address such as name@example.com",
                "password: must be at least 12 characters",
                r"display_name: must match ^[^\x00-\x1F\x7F-\x9F]*$",
            ]
        );
        register.email = format!("{}@example.com", "a".repeat(250));
        register.password = "p".repeat(129);
        register.display_name = "d".repeat(101);
        assert_eq!(
            broken(&register),
            [
                "email: must be at most 254 characters",
                "password: must be at most 128 characters",
                "display_name: must be at most 100 characters",
            ]
        );
        // Lengths count characters, not bytes.
        register.email = "a@example.com".into();
        register.password = "é".repeat(12);
        register.display_name = "é".repeat(100);
        check(&register).expect("100 two-byte characters");
    }

    #[test]
    fn blank_and_control_characters_in_one_line_texts() {
        let adjust = |reason: &str| inventory::AdjustStockRequest {
            sku: "MUG-001".into(),
            delta: 1,
            reason: reason.into(),
            request_id: "r-1".into(),
        };
        check(&adjust("restock")).expect("plain text");
        check(&adjust("  restock  ")).expect("spaces around text");
        for bad in ["   ", "\u{3000}", "line\nbreak", "nul\u{0}", "c1\u{85}"] {
            assert_eq!(broken(&adjust(bad)).len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn integer_rules() {
        let line = |quantity| order::CreateOrderLine {
            sku: "MUG-001".into(),
            quantity,
        };
        let request = |quantity| order::CreateOrderRequest {
            request_id: String::new(),
            lines: vec![line(1), line(quantity)],
        };
        check(&request(1000)).expect("the largest quantity");
        // REQUIRED on a number without presence: zero is "unset".
        assert_eq!(broken(&request(0)), ["lines[1].quantity: is required"]);
        assert_eq!(
            broken(&request(-5)),
            ["lines[1].quantity: must be between 1 and 1000"]
        );
        assert_eq!(
            broken(&request(1001)),
            ["lines[1].quantity: must be between 1 and 1000"]
        );
        let delta = |delta| inventory::AdjustStockRequest {
            sku: "MUG-001".into(),
            delta,
            reason: "count".into(),
            request_id: "r-1".into(),
        };
        check(&delta(-1_000_000_000)).expect("the largest decrease");
        assert_eq!(broken(&delta(0)), ["delta: is required"]);
        assert_eq!(
            broken(&delta(i64::MIN)),
            ["delta: must be between -1000000000 and 1000000000"]
        );
        let list = |page_size| user::ListUsersRequest {
            page_size,
            page_token: String::new(),
        };
        check(&list(0)).expect("the default page size");
        assert_eq!(broken(&list(-1)), ["page_size: must be between 0 and 1000"]);
    }

    #[test]
    fn not_in_is_its_own_rule() {
        let rules = Int64Rules {
            not_in: vec![0],
            ..Default::default()
        };
        let mut out = Vec::new();
        IntegerRules::from_int64(&rules).evaluate(0, "delta", &mut out);
        assert_eq!(out, [violation("delta", "must not be 0")]);
    }

    #[test]
    fn nested_messages_and_repeated_fields() {
        let create = inventory::CreateProductRequest {
            sku: "mug".into(),
            name: "Mug".into(),
            description: "two\nlines are fine".into(),
            unit_price: Some(common::Money {
                currency_code: "eur".into(),
                amount_minor: -1,
            }),
            initial_stock: 0,
        };
        assert_eq!(
            broken(&create),
            [
                "sku: must match ^[A-Z0-9][A-Z0-9-]{2,31}$",
                "unit_price.currency_code: must match ^[A-Z]{3}$",
                "unit_price.amount_minor: must be between 0 and 1000000000000",
            ]
        );
        let many = order::CreateOrderRequest {
            request_id: String::new(),
            lines: (0..101)
                .map(|_| order::CreateOrderLine {
                    sku: "MUG-001".into(),
                    quantity: 1,
                })
                .collect(),
        };
        assert_eq!(broken(&many), ["lines: must have at most 100 items"]);
    }

    #[test]
    fn enums_must_be_defined() {
        let list = order::ListOrdersRequest {
            page_size: 0,
            page_token: String::new(),
            status: 42,
        };
        assert_eq!(
            broken(&list),
            ["status: must be a defined OrderStatus value"]
        );
    }

    #[test]
    fn uuids_and_emails() {
        for good in [
            "0190a5a4-7b1c-7d3e-8f00-2a1b3c4d5e6f",
            "0190A5A4-7B1C-7D3E-8F00-2A1B3C4D5E6F",
        ] {
            assert!(is_uuid(good), "{good}");
        }
        for bad in [
            "",
            "0190a5a47b1c7d3e8f002a1b3c4d5e6f",
            "{0190a5a4-7b1c-7d3e-8f00-2a1b3c4d5e6f}",
            "0190a5a4-7b1c-7d3e-8f00-2a1b3c4d5e6g",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
        for good in [
            "a@b",
            "first.last+tag@example.co.uk",
            "x!#$%&'*/=?^_`{|}~-@a-b.example",
        ] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@-x.com",
            "a@x..com",
            "a@b@c",
            "é@example.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let get = user::GetUserRequest {
            user_id: "42".into(),
        };
        assert_eq!(broken(&get).len(), 1);
    }

    #[test]
    fn ignore_if_zero_value_skips_an_unset_field() {
        let field = descriptor_of("shop.order.v1.CreateOrderRequest")
            .and_then(|m| m.get_field_by_name("request_id"))
            .expect("field");
        let check = FieldCheck {
            field,
            required: false,
            ignore: Ignore::IfZeroValue,
            value: ValueCheck::String(StringCheck {
                rules: StringRules {
                    min_len: Some(5),
                    ..Default::default()
                },
                pattern: None,
            }),
        };
        let mut message = order::CreateOrderRequest::default().transcode_to_dynamic_in_shopmesh();
        let mut out = Vec::new();
        check.evaluate(&message, "request_id", &mut out);
        assert!(out.is_empty(), "{out:?}");
        message.set_field_by_name("request_id", Value::String("abc".into()));
        check.evaluate(&message, "request_id", &mut out);
        assert_eq!(
            out,
            [violation("request_id", "must be at least 5 characters")]
        );
    }

    trait InShopmesh {
        fn transcode_to_dynamic_in_shopmesh(&self) -> DynamicMessage;
    }

    impl<M: prost::Message + prost::Name> InShopmesh for M {
        fn transcode_to_dynamic_in_shopmesh(&self) -> DynamicMessage {
            let descriptor = descriptor_of(&M::full_name()).expect("descriptor");
            DynamicMessage::decode(descriptor, self.encode_to_vec().as_slice()).expect("decode")
        }
    }
}
