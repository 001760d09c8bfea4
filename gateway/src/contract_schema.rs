//! The contract's rules (shop_platform::contract) as JSON Schema keywords, so
//! that the OpenAPI document refuses what the services refuse: a client or a
//! fuzzer that keeps to the document sends nothing a rule rejects.
//!
//! 64-bit integers are decimal strings in proto3 JSON, where `minimum` does
//! not apply, so their bounds become a pattern over the decimal digits
//! ([`decimal_pattern`]).

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::{Value, json};
use shop_platform::contract::{self, IntegerRules};
use shop_proto::buf::validate::{FieldRules, StringRules, field_rules, string_rules};

/// `schema` (the field's schema without rules) with the field's rules added:
/// for a repeated field the list rules on the array and the item rules on
/// `items`.
pub fn with_rules(field: &FieldDescriptor, mut schema: Value) -> Value {
    let rules = contract::field_rules(field);
    let required = contract::is_required(field, rules.as_ref());
    let rules = rules.unwrap_or_default();
    if field.is_map() {
        return schema;
    }
    if field.is_list() {
        if let Some(field_rules::Type::Repeated(repeated)) = &rules.r#type {
            if let Some(min) = repeated.min_items {
                schema["minItems"] = json!(min);
            }
            if let Some(max) = repeated.max_items {
                schema["maxItems"] = json!(max);
            }
            if repeated.unique == Some(true) {
                schema["uniqueItems"] = json!(true);
            }
            if let Some(items) = &repeated.items {
                let item = schema["items"].take();
                schema["items"] = scalar_rules(field, items, false, item);
            }
        }
        // Required: not empty.
        if required && schema.get("minItems").is_none() {
            schema["minItems"] = json!(1);
        }
        return schema;
    }
    scalar_rules(field, &rules, required, schema)
}

/// The rules of one value; `required` on a field without presence excludes its
/// zero value.
fn scalar_rules(
    field: &FieldDescriptor,
    rules: &FieldRules,
    required: bool,
    schema: Value,
) -> Value {
    let non_zero = required && !field.supports_presence();
    match (field.kind(), rules.r#type.as_ref()) {
        (Kind::String, string) => {
            let string = match string {
                Some(field_rules::Type::String(r)) => r.clone(),
                _ => StringRules::default(),
            };
            string_keywords(schema, &string, non_zero)
        }
        (Kind::Int64 | Kind::Sint64 | Kind::Sfixed64, _) => {
            let mut integer = contract::integer_rules(rules).unwrap_or_default();
            if non_zero {
                integer.not_in.push(0);
            }
            // Both forms (openapi::int64_schema): the decimal string's pattern
            // and the number's bounds say the same.
            let mut schema = schema;
            if let Some([string, number]) = schema
                .get_mut("anyOf")
                .and_then(Value::as_array_mut)
                .map(Vec::as_mut_slice)
            {
                *string = int64_keywords(
                    string.take(),
                    &integer,
                    i128::from(i64::MIN),
                    i128::from(i64::MAX),
                );
                *number = integer_keywords(number.take(), &integer);
            }
            schema
        }
        (Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32, _) => {
            let mut integer = contract::integer_rules(rules).unwrap_or_default();
            if non_zero {
                integer.not_in.push(0);
            }
            integer_keywords(schema, &integer)
        }
        (Kind::Enum(descriptor), Some(field_rules::Type::Enum(rules))) => {
            // Names exist only for declared values, so a rule narrows the
            // names to the declared values it allows; numbers are narrowed the
            // same way once any rule restricts them (a number the enum does not
            // declare passes only an open enum with no `in` list).
            let narrowed = !rules.r#in.is_empty()
                || !rules.not_in.is_empty()
                || non_zero
                || rules.defined_only == Some(true);
            if !narrowed {
                return schema;
            }
            let allowed = descriptor
                .values()
                .filter(|v| rules.r#in.is_empty() || rules.r#in.contains(&v.number()))
                .filter(|v| !rules.not_in.contains(&v.number()))
                .filter(|v| !(non_zero && v.number() == 0));
            crate::openapi::enum_schema(allowed, crate::openapi::EnumNumbers::Listed)
        }
        _ => schema,
    }
}

fn string_keywords(mut schema: Value, rules: &StringRules, non_zero: bool) -> Value {
    let min = rules.min_len.unwrap_or(0).max(u64::from(non_zero));
    if min > 0 {
        schema["minLength"] = json!(min);
    }
    if let Some(max) = rules.max_len {
        schema["maxLength"] = json!(max);
    }
    if let Some(pattern) = &rules.pattern {
        schema["pattern"] = json!(pattern);
    }
    if let Some(value) = &rules.r#const {
        schema["const"] = json!(value);
    }
    if !rules.r#in.is_empty() {
        schema["enum"] = json!(rules.r#in);
    }
    if !rules.not_in.is_empty() {
        schema["not"] = json!({"enum": rules.not_in});
    }
    match rules.well_known {
        Some(string_rules::WellKnown::Email(true)) => schema["format"] = json!("email"),
        Some(string_rules::WellKnown::Uuid(true)) => schema["format"] = json!("uuid"),
        _ => {}
    }
    schema
}

fn integer_keywords(mut schema: Value, rules: &IntegerRules) -> Value {
    if let Some(min) = rules.min {
        schema["minimum"] = json!(min as i64);
    }
    if let Some(max) = rules.max {
        schema["maximum"] = json!(max as i64);
    }
    if let Some(value) = rules.r#const {
        schema["const"] = json!(value as i64);
    }
    if !rules.r#in.is_empty() {
        schema["enum"] = json!(rules.r#in.iter().map(|&v| v as i64).collect::<Vec<_>>());
    }
    if !rules.not_in.is_empty() {
        schema["not"] = json!({"enum": rules.not_in.iter().map(|&v| v as i64).collect::<Vec<_>>()});
    }
    schema
}

/// A 64-bit integer's string schema: its bounds, exclusions and sets become
/// the pattern of the decimal strings allowed.
fn int64_keywords(mut schema: Value, rules: &IntegerRules, lowest: i128, highest: i128) -> Value {
    let unconstrained = rules.min.is_none()
        && rules.max.is_none()
        && rules.r#const.is_none()
        && rules.r#in.is_empty()
        && rules.not_in.is_empty();
    if unconstrained {
        return schema;
    }
    let ranges: Vec<(i128, i128)> = if let Some(value) = rules.r#const {
        vec![(value, value)]
    } else if !rules.r#in.is_empty() {
        rules.r#in.iter().map(|&v| (v, v)).collect()
    } else {
        vec![(rules.min.unwrap_or(lowest), rules.max.unwrap_or(highest))]
    };
    let ranges = without(ranges, &rules.not_in);
    schema["pattern"] = json!(decimal_pattern(&ranges));
    schema
}

/// `ranges` with the points of `excluded` cut out.
fn without(ranges: Vec<(i128, i128)>, excluded: &[i128]) -> Vec<(i128, i128)> {
    let mut ranges = ranges;
    for &x in excluded {
        ranges = ranges
            .into_iter()
            .flat_map(|(lo, hi)| {
                if x < lo || x > hi {
                    vec![(lo, hi)]
                } else {
                    [(lo, x - 1), (x + 1, hi)]
                        .into_iter()
                        .filter(|(a, b)| a <= b)
                        .collect()
                }
            })
            .collect();
    }
    ranges
}

/// A pattern matching exactly the canonical decimal forms (no `+`, no leading
/// zeros, no `-0`) of the integers in the inclusive `ranges`.
pub fn decimal_pattern(ranges: &[(i128, i128)]) -> String {
    let mut alternatives = Vec::new();
    for &(lo, hi) in ranges {
        if hi < 0 {
            alternatives.extend(non_negative(-hi, -lo).into_iter().map(|a| format!("-{a}")));
        } else if lo < 0 {
            alternatives.extend(non_negative(1, -lo).into_iter().map(|a| format!("-{a}")));
            alternatives.extend(non_negative(0, hi));
        } else {
            alternatives.extend(non_negative(lo, hi));
        }
    }
    if alternatives.is_empty() {
        // Nothing is allowed: a pattern nothing matches.
        return "^[^\\s\\S]$".to_owned();
    }
    format!("^(?:{})$", alternatives.join("|"))
}

/// Alternatives for `lo..=hi`, both at least 0, grouped by digit count.
fn non_negative(lo: i128, hi: i128) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = lo;
    while start <= hi {
        let digits = start.to_string().len() as u32;
        let end = hi.min(10i128.pow(digits) - 1);
        out.extend(same_length(&start.to_string(), &end.to_string()));
        start = end + 1;
    }
    out
}

/// Alternatives for the decimal strings from `lo` to `hi`, both `n` digits.
fn same_length(lo: &str, hi: &str) -> Vec<String> {
    if lo == hi {
        return vec![lo.to_owned()];
    }
    let (l, h) = (lo.as_bytes()[0], hi.as_bytes()[0]);
    let rest = lo.len() - 1;
    let any = |n: usize| match n {
        0 => String::new(),
        1 => "[0-9]".to_owned(),
        n => format!("[0-9]{{{n}}}"),
    };
    let digit_class = |a: u8, b: u8| {
        if a == b {
            (a as char).to_string()
        } else {
            format!("[{}-{}]", a as char, b as char)
        }
    };
    if rest == 0 {
        return vec![digit_class(l, h)];
    }
    if lo[1..].bytes().all(|b| b == b'0') && hi[1..].bytes().all(|b| b == b'9') {
        return vec![format!("{}{}", digit_class(l, h), any(rest))];
    }
    if l == h {
        return same_length(&lo[1..], &hi[1..])
            .into_iter()
            .map(|tail| format!("{}{tail}", l as char))
            .collect();
    }
    let mut out: Vec<String> = same_length(&lo[1..], &"9".repeat(rest))
        .into_iter()
        .map(|tail| format!("{}{tail}", l as char))
        .collect();
    if h - l > 1 {
        out.push(format!("{}{}", digit_class(l + 1, h - 1), any(rest)));
    }
    out.extend(
        same_length(&"0".repeat(rest), &hi[1..])
            .into_iter()
            .map(|tail| format!("{}{tail}", h as char)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, value: i128) -> bool {
        regex::Regex::new(pattern)
            .expect("pattern compiles")
            .is_match(&value.to_string())
    }

    #[test]
    fn decimal_patterns_match_exactly_their_ranges() {
        let cases: &[&[(i128, i128)]] = &[
            &[(1, 1000)],
            &[(0, 1_000_000_000)],
            &[(0, 1_000_000_000_000)],
            &[(-1_000_000_000, -1), (1, 1_000_000_000)],
            &[(17, 4321)],
            &[(-250, 37)],
            &[(5, 5), (90, 109)],
        ];
        for &ranges in cases {
            let pattern = decimal_pattern(ranges);
            let inside = |v: i128| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&v));
            let mut probes: Vec<i128> = (-1200..=5000).collect();
            for &(lo, hi) in ranges {
                probes.extend([lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, hi * 10]);
            }
            for v in probes {
                assert_eq!(matches(&pattern, v), inside(v), "{v} against {pattern}");
            }
        }
    }

    #[test]
    fn decimal_patterns_refuse_other_spellings() {
        let pattern = regex::Regex::new(&decimal_pattern(&[(-10, 10)])).expect("compiles");
        for spelling in ["+5", "05", "-0", " 5", "5 ", "", "-", "1e1", "5\n"] {
            assert!(!pattern.is_match(spelling), "{spelling:?}");
        }
    }

    #[test]
    fn exclusions_split_ranges() {
        assert_eq!(without(vec![(-3, 3)], &[0]), [(-3, -1), (1, 3)]);
        assert_eq!(without(vec![(0, 0)], &[0]), []);
        assert_eq!(decimal_pattern(&[]), "^[^\\s\\S]$");
    }
}
