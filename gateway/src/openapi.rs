//! The OpenAPI 3.1 document, generated from the same routes and descriptors that
//! drive the gateway: paths, parameters, request and response schemas, the
//! bearer security scheme and the google.rpc.Status error schema.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use prost_reflect::{EnumValueDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use shop_platform::contract;

use crate::routes::{Route, RouteMethod, Segment};
use crate::success::Success;

/// 64-bit integers are printed as decimal strings in proto3 JSON (a double
/// cannot hold them all), and parsers take a JSON number as well: the string
/// form first (its pattern refuses `""` and `"ten"`), then the number.
fn int64_schema() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"},
        {"type": "integer", "format": "int64"}
    ]})
}

fn uint64_schema() -> Value {
    json!({"anyOf": [
        {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"},
        {"type": "integer", "format": "uint64", "minimum": 0}
    ]})
}

fn scalar_schema(field: &FieldDescriptor, refs: &mut BTreeSet<String>) -> Value {
    match field.kind() {
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "uint32"}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int64_schema(),
        Kind::Uint64 | Kind::Fixed64 => uint64_schema(),
        Kind::Double | Kind::Float => json!({"type": "number"}),
        // NullValue's one JSON form is null.
        Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => json!({"type": "null"}),
        Kind::Enum(e) => enum_schema(e.values(), EnumNumbers::Any),
        Kind::Message(m) => message_ref(&m, refs),
    }
}

/// Which numbers an enum field takes besides the names.
pub(crate) enum EnumNumbers {
    /// Any int32: an open enum keeps a number it does not declare.
    Any,
    /// Only those of the values listed.
    Listed,
}

/// An enum field in proto3 JSON: a value's name, or its number (parsers take
/// both; printers write the name of every declared value).
pub(crate) fn enum_schema(
    values: impl Iterator<Item = EnumValueDescriptor>,
    numbers: EnumNumbers,
) -> Value {
    let (names, listed): (Vec<Value>, Vec<Value>) =
        values.map(|v| (json!(v.name()), json!(v.number()))).unzip();
    let numbers = match numbers {
        EnumNumbers::Any => json!({"type": "integer", "format": "int32"}),
        EnumNumbers::Listed => json!({"type": "integer", "enum": listed}),
    };
    json!({"anyOf": [{"type": "string", "enum": names}, numbers]})
}

/// `schema`, or JSON null: proto3 JSON parsers read a null as the field's
/// default, so a field that may be left out may also be sent as null.
fn or_null(mut schema: Value) -> Value {
    let null_kind = json!("null");
    let plain = schema.get("enum").is_none() && schema.get("const").is_none();
    let only_any_of =
        schema.as_object().is_some_and(|o| o.len() == 1) && schema.get("anyOf").is_some();
    if only_any_of {
        if let Some(forms) = schema["anyOf"].as_array_mut()
            && !forms.contains(&json!({"type": "null"}))
        {
            forms.push(json!({"type": "null"}));
        }
        return schema;
    }
    match schema.get_mut("type") {
        Some(Value::Array(kinds)) if plain => {
            if !kinds.contains(&null_kind) {
                kinds.push(null_kind);
            }
            schema
        }
        Some(kind @ Value::String(_)) if plain => {
            *kind = json!([kind.take(), null_kind]);
            schema
        }
        _ => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

/// The schema of a message field: the well-known types by their proto3 JSON
/// forms (a Timestamp is a string, a wrapper its scalar or null, a Value any
/// JSON), every other message a reference to its component.
fn message_ref(message: &MessageDescriptor, refs: &mut BTreeSet<String>) -> Value {
    match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Field paths in lowerCamelCase, separated by commas (google.protobuf.FieldMask)."
        }),
        "google.protobuf.StringValue" => or_null(json!({"type": "string"})),
        "google.protobuf.BytesValue" => {
            or_null(json!({"type": "string", "contentEncoding": "base64"}))
        }
        "google.protobuf.BoolValue" => or_null(json!({"type": "boolean"})),
        "google.protobuf.Int32Value" => or_null(json!({"type": "integer", "format": "int32"})),
        "google.protobuf.UInt32Value" => or_null(json!({"type": "integer", "format": "uint32"})),
        "google.protobuf.Int64Value" => or_null(int64_schema()),
        "google.protobuf.UInt64Value" => or_null(uint64_schema()),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            or_null(json!({"type": "number"}))
        }
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => {
            json!({"description": "Any JSON value (google.protobuf.Value)."})
        }
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "description": "A message of the type @type names, with its fields beside @type (google.protobuf.Any).",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        name => {
            refs.insert(name.to_owned());
            json!({"$ref": format!("#/components/schemas/{name}")})
        }
    }
}

fn field_schema(field: &FieldDescriptor, refs: &mut BTreeSet<String>) -> Value {
    crate::contract_schema::with_rules(field, type_schema(field, refs))
}

/// A field's schema by its type alone, without the contract's rules.
fn type_schema(field: &FieldDescriptor, refs: &mut BTreeSet<String>) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": scalar_schema(&value, refs)});
    }
    let item = scalar_schema(field, refs);
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

/// A message's schema: the fields a client must send (REQUIRED, buf.validate's
/// `required`, or a zero value its rules refuse) are `required` (but not those a route
/// takes from its path, `path_bound` as `message.field`: the path always
/// carries them, and the body need not repeat them: they are `readOnly`, like
/// OUTPUT_ONLY ones), the others may be null.
///
/// A message no request carries (`answer_only`) is described as the gateway
/// prints it: every field without presence always there, never null
/// (`transcode` writes default values), a message field only when set.
fn message_schema(
    message: &MessageDescriptor,
    (path_bound, path_given): (&BTreeSet<String>, &BTreeSet<String>),
    answer_only: bool,
    refs: &mut BTreeSet<String>,
) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in message.fields() {
        // A field some route binds to its path: the path's value replaces
        // whatever the body says, so the body may say anything of its type.
        let bound = path_bound.contains(field.full_name());
        let mut schema = if bound {
            type_schema(&field, refs)
        } else {
            field_schema(&field, refs)
        };
        if answer_only {
            if !field.supports_presence() {
                required.push(json!(field.json_name()));
            }
        } else if contract::must_be_sent(&field) && !bound {
            required.push(json!(field.json_name()));
        } else {
            schema = or_null(schema);
        }
        // OUTPUT_ONLY is the service's to set; a path-bound field the path's
        // to give (a test tool then reads no value for another route's path
        // from a body, as schemathesis's link inference did).
        let given = path_given.contains(field.full_name());
        if given || contract::field_behaviors(&field).contains(&contract::behavior::OUTPUT_ONLY) {
            schema = with_keyword(schema, "readOnly", json!(true));
        }
        properties.insert(field.json_name().to_owned(), schema);
    }
    let mut schema =
        json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    schema
}

/// The messages some request carries, nested ones included.
fn request_messages(routes: &[Route]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<MessageDescriptor> = routes.iter().map(|r| r.rpc.input()).collect();
    while let Some(message) = todo.pop() {
        if !seen.insert(message.full_name().to_owned()) {
            continue;
        }
        for field in message.fields() {
            if let Kind::Message(inner) = field.kind() {
                todo.push(inner);
            }
        }
    }
    seen
}

/// `schema` with `keyword` set; a `$ref` is wrapped (`allOf`) so that the
/// keyword applies beside it in every OpenAPI 3.1 reader.
fn with_keyword(mut schema: Value, keyword: &str, value: Value) -> Value {
    if schema.get("$ref").is_some() {
        return json!({"allOf": [schema], keyword: value});
    }
    schema[keyword] = value;
    schema
}

/// The fields (`package.Message.field`) that some route fills from its path,
/// nested ones and the messages on the way included (`{book.isbn}` names
/// `Request.book` and `Book.isbn`); the second set holds only the last field
/// of each path (`Book.isbn`), the one the path gives whole.
fn path_bound_fields(routes: &[Route]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut bound, mut given) = (BTreeSet::new(), BTreeSet::new());
    for route in routes {
        for segment in &route.segments {
            let Segment::Variable { field, .. } = segment else {
                continue;
            };
            let mut message = route.rpc.input();
            let mut names = field.split('.').peekable();
            while let Some(name) = names.next() {
                let Some(part) = message.get_field_by_name(name) else {
                    break;
                };
                bound.insert(part.full_name().to_owned());
                match part.kind() {
                    Kind::Message(inner) if names.peek().is_some() => message = inner,
                    _ => {
                        given.insert(part.full_name().to_owned());
                        break;
                    }
                }
            }
        }
    }
    (bound, given)
}

/// The field a dotted path (`product.sku`) names in `message`.
fn nested_field(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let field = message.get_field_by_name(first)?;
    match (rest, field.kind()) {
        (None, _) => Some(field),
        (Some(rest), Kind::Message(inner)) => nested_field(&inner, rest),
        (Some(_), _) => None,
    }
}

/// The OpenAPI name of the path variable bound to `field`: a nested field's
/// dots become underscores (`product.sku` → `product_sku`), since tools read
/// `{a.b}` in a path template as attribute access and fail on it.
fn path_parameter(field: &str) -> String {
    field.replace('.', "_")
}

fn openapi_path(route: &Route) -> String {
    let mut path = String::new();
    for segment in &route.segments {
        path.push('/');
        match segment {
            Segment::Literal(l) => path.push_str(l),
            Segment::Variable { field, .. } => {
                path.push_str(&format!("{{{}}}", path_parameter(field)));
            }
        }
    }
    if let Some(verb) = &route.verb {
        path.push(':');
        path.push_str(verb);
    }
    path
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "google.rpc.Status: the gRPC code, a message naming the problem, and typed details.",
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "additionalProperties": true}}
        }
    })
}

pub fn document(routes: &[Route], public: &BTreeSet<String>) -> Value {
    let mut refs = BTreeSet::new();
    let (path_bound, path_given) = path_bound_fields(routes);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes {
        let rpc = &route.rpc;
        let input = rpc.input();
        let bound: Vec<String> = route
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Variable { field, .. } => Some(field.clone()),
                Segment::Literal(_) => None,
            })
            .collect();
        let mut parameters: Vec<Value> = bound
            .iter()
            .map(|name| {
                let schema = nested_field(&input, name).map_or_else(
                    || json!({"type": "string"}),
                    |f| field_schema(&f, &mut refs),
                );
                json!({"name": path_parameter(name), "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if route.body != "*" {
            for field in input.fields() {
                let taken = bound.contains(&field.name().to_owned()) || field.name() == route.body;
                if taken {
                    continue;
                }
                // A map of messages cannot be given in a query; other messages
                // are set field by field (`a.b=…`), which OpenAPI cannot list
                // (the request body's schema shows them).
                let listable = match field.kind() {
                    Kind::Message(entry) if field.is_map() => {
                        !matches!(entry.map_entry_value_field().kind(), Kind::Message(_))
                    }
                    Kind::Message(message) => crate::transcode::is_query_value(&message),
                    _ => true,
                };
                if !listable {
                    continue;
                }
                // A PATCH's mask is the body's fields (`transcode::filled_mask`).
                if crate::transcode::filled_mask(route).is_some_and(|(mask, _)| mask == field) {
                    continue;
                }
                let required = contract::must_be_sent(&field);
                let mut parameter = json!({"name": field.json_name(), "in": "query", "required": required, "schema": field_schema(&field, &mut refs)});
                if field.is_map() {
                    // `name[key]=value`, one pair per entry.
                    parameter["style"] = json!("deepObject");
                    parameter["explode"] = json!(true);
                }
                parameters.push(parameter);
            }
        }
        let mut operation = json!({
            "tags": [rpc.parent_service().name()],
            "summary": format!("{} ({})", rpc.name(), rpc.full_name()),
            "parameters": parameters,
            "responses": {
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}}
            }
        });
        let body_schema = match route.body.as_str() {
            "" => None,
            "*" => Some(message_ref(&input, &mut refs)),
            name => input
                .get_field_by_name(name)
                .map(|f| field_schema(&f, &mut refs)),
        };
        // A missing body reads as `{}`: it is refused only when some field the
        // body carries must be sent.
        let body_required = match route.body.as_str() {
            "" => false,
            "*" => input
                .fields()
                .any(|f| contract::must_be_sent(&f) && !bound.iter().any(|b| b == f.name())),
            // A message the path fills part of is there without a body.
            name => {
                let inside = format!("{name}.");
                input
                    .get_field_by_name(name)
                    .is_some_and(|f| contract::must_be_sent(&f))
                    && !bound.iter().any(|b| b.starts_with(&inside))
            }
        };
        if let Some(schema) = body_schema {
            operation["requestBody"] = if crate::transcode::takes_raw_body(route) {
                // google.api.HttpBody: any bytes, of the type the request names.
                json!({"required": false, "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}})
            } else if rpc.is_client_streaming() {
                // A client stream: one message per line, each of this schema.
                json!({"required": false, "description": "Newline-delimited JSON: one object of this schema per line, each a message of the stream.", "content": {"application/x-ndjson": {"schema": schema}}})
            } else {
                json!({"required": body_required, "content": {"application/json": {"schema": schema}}})
            };
        }
        let output = rpc.output();
        let raw_body = route.response_body.is_empty() && crate::transcode::is_http_body(&output);
        let out_schema = if raw_body {
            // Bytes as they are, of the media type the backend names.
            json!({"type": "string", "format": "binary"})
        } else if route.response_body.is_empty() {
            message_ref(&output, &mut refs)
        } else {
            output
                .get_field_by_name(&route.response_body)
                .map_or(json!({}), |f| field_schema(&f, &mut refs))
        };
        let content = if raw_body {
            json!({"*/*": {"schema": out_schema}})
        } else if rpc.is_server_streaming() {
            // Each Server-Sent Event: `event` is "message" (data is one response as JSON)
            // or "error" (data is a google.rpc.Status).
            let event = json!({
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["message", "error"]},
                    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": out_schema},
                    "id": {"type": "string"},
                    "retry": {"type": "integer"}
                },
                "required": ["data"]
            });
            json!({"text/event-stream": {"schema": event}, "application/x-ndjson": {"schema": out_schema}})
        } else {
            json!({"application/json": {"schema": out_schema}})
        };
        if !public.contains(&format!(
            "{}/{}",
            rpc.parent_service().full_name(),
            rpc.name()
        )) {
            operation["security"] = json!([{"bearerAuth": []}]);
        }
        // OpenAPI wants each operationId unique: an additional binding gets its
        // number, a route of any method one operation per method.
        let mut id = format!("{}_{}", rpc.parent_service().name(), rpc.name());
        if route.binding > 0 {
            id.push_str(&format!("_{}", route.binding));
        }
        let methods: Vec<(String, String)> = match &route.method {
            RouteMethod::One(m) => vec![(m.as_str().to_lowercase(), id)],
            RouteMethod::Any => ["get", "put", "post", "delete", "patch"]
                .iter()
                .map(|m| ((*m).to_owned(), format!("{id}_{m}")))
                .collect(),
        };
        let entry = paths.entry(openapi_path(route)).or_default();
        for (method, id) in methods {
            let mut operation = operation.clone();
            operation["operationId"] = json!(id);
            // A GET answers 200 whatever the RPC declares (`forward`).
            let success = if method == "get" {
                &Success::default()
            } else {
                &route.success
            };
            let (code, answer) = success_response(success, &content);
            operation["responses"][code] = answer;
            if method == "get" && !rpc.is_server_streaming() && !raw_body {
                conditional_get(&mut operation);
            }
            entry.insert(method, operation);
        }
    }

    // Schemas for every message reachable from the operations.
    let sent = request_messages(routes);
    let pool = routes.first().map(|r| r.rpc.parent_pool().clone());
    let mut schemas = Map::new();
    schemas.insert("google.rpc.Status".into(), status_schema());
    let mut done = BTreeSet::new();
    while let Some(name) = refs.iter().find(|n| !done.contains(*n)).cloned() {
        done.insert(name.clone());
        if let Some(message) = pool.as_ref().and_then(|p| p.get_message_by_name(&name)) {
            let answer_only = !sent.contains(&name);
            let schema =
                message_schema(&message, (&path_bound, &path_given), answer_only, &mut refs);
            schemas.insert(name, schema);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "shopmesh", "version": env!("CARGO_PKG_VERSION"),
                 "description": "REST/JSON API of the shopmesh services, generated from the google.api.http annotations."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        }
    })
}

/// The success response an RPC declares (`shop.api.v1.http_response`): its
/// code, no content for 204, and the `Location` header when it names one.
fn success_response(success: &Success, content: &Value) -> (String, Value) {
    let status = success.status;
    let mut answer = json!({"description": status.canonical_reason().unwrap_or("OK")});
    if status != StatusCode::NO_CONTENT {
        answer["content"] = content.clone();
    }
    if !success.location_template.is_empty() {
        answer["headers"] = json!({"Location": {
            "description": format!("the created resource's address: {}", success.location_template),
            "schema": {"type": "string", "format": "uri-reference"}
        }});
    }
    (status.as_str().to_owned(), answer)
}

/// A unary GET's answer carries a weak ETag, and `If-None-Match` naming it
/// gets 304 with no body (see `conditional`).
fn conditional_get(operation: &mut Value) {
    let etag = json!({"description": "weak tag of this body; send it back in If-None-Match", "schema": {"type": "string"}});
    operation["responses"]["200"]["headers"] = json!({"ETag": etag});
    operation["responses"]["304"] = json!({"description": "Not Modified: the If-None-Match tag is the current one", "headers": {"ETag": etag}});
    if let Some(parameters) = operation["parameters"].as_array_mut() {
        parameters.push(json!({"name": "If-None-Match", "in": "header", "required": false, "description": "an ETag from an earlier answer", "schema": {"type": "string"}}));
    }
}
