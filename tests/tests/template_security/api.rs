//! Every API Gateway method requires `AWS_IAM` (see the crate's
//! documentation): REST methods, SAM events and OpenAPI bodies, and there
//! is no other way in (HTTP API, function URL without IAM).

use serde_json::{Value, json};

use super::{fails_with, items, resources, template, violations};

pub(super) fn apis(template: &Value, found: &mut Vec<String>) {
    for kind in [
        "AWS::Serverless::HttpApi",
        "AWS::ApiGatewayV2::Api",
        "AWS::ApiGatewayV2::Route",
    ] {
        for (name, _) in resources(template, kind) {
            found.push(format!("{name}: {kind} is not the IAM-authorized REST API"));
        }
    }
    for (name, url) in resources(template, "AWS::Lambda::Url") {
        if url["AuthType"] != "AWS_IAM" {
            found.push(format!("{name}: function URL without AWS_IAM"));
        }
    }
    for (name, api) in resources(template, "AWS::Serverless::Api") {
        if api["Auth"]["DefaultAuthorizer"] != "AWS_IAM" {
            found.push(format!("{name}: Auth.DefaultAuthorizer is not AWS_IAM"));
        }
        if !api["Cors"].is_null() && api["Auth"]["AddDefaultAuthorizerToCorsPreflight"] == false {
            found.push(format!("{name}: CORS preflight methods without AWS_IAM"));
        }
        if !api["DefinitionUri"].is_null() {
            found.push(format!("{name}: DefinitionUri cannot be checked here"));
        }
        openapi_operations(name, &api["DefinitionBody"], found);
    }
    for (name, api) in resources(template, "AWS::ApiGateway::RestApi") {
        if !api["BodyS3Location"].is_null() {
            found.push(format!("{name}: BodyS3Location cannot be checked here"));
        }
        openapi_operations(name, &api["Body"], found);
    }
    for (name, method) in resources(template, "AWS::ApiGateway::Method") {
        if method["AuthorizationType"] != "AWS_IAM" {
            found.push(format!("{name}: AuthorizationType is not AWS_IAM"));
        }
    }
    let functions = resources(template, "AWS::Serverless::Function")
        .chain(resources(template, "AWS::Lambda::Function"));
    for (name, function) in functions {
        let url_auth = &function["FunctionUrlConfig"]["AuthType"];
        if !url_auth.is_null() && url_auth != "AWS_IAM" {
            found.push(format!("{name}: function URL without AWS_IAM"));
        }
        for (event, spec) in function["Events"].as_object().into_iter().flatten() {
            let props = &spec["Properties"];
            match spec["Type"].as_str() {
                Some("Api") => {
                    let api = props["RestApiId"]["Ref"].as_str().unwrap_or_default();
                    if template["Resources"][api]["Type"] != "AWS::Serverless::Api" {
                        found.push(format!(
                            "{name}/{event}: no RestApiId of the stack's API (SAM would create an API without auth)"
                        ));
                    }
                    let authorizer = &props["Auth"]["Authorizer"];
                    if !authorizer.is_null() && authorizer != "AWS_IAM" {
                        found.push(format!("{name}/{event}: Auth.Authorizer {authorizer}"));
                    }
                }
                Some("HttpApi") => found.push(format!("{name}/{event}: an HTTP API event")),
                _ => {}
            }
        }
    }
}

/// Every operation of an OpenAPI/Swagger body requires SigV4: a security
/// requirement naming an `awsSigv4` scheme, or `x-amazon-apigateway-auth`
/// of type AWS_IAM.
fn openapi_operations(api: &str, body: &Value, found: &mut Vec<String>) {
    if body.is_null() {
        return;
    }
    let schemes = if body["securityDefinitions"].is_object() {
        &body["securityDefinitions"]
    } else {
        &body["components"]["securitySchemes"]
    };
    let sigv4 = |requirement: &Value| {
        requirement.as_object().is_some_and(|names| {
            !names.is_empty()
                && names
                    .keys()
                    .all(|n| schemes[n]["x-amazon-apigateway-authtype"] == "awsSigv4")
        })
    };
    const METHODS: [&str; 8] = [
        "get",
        "put",
        "post",
        "delete",
        "options",
        "head",
        "patch",
        "x-amazon-apigateway-any-method",
    ];
    for (path, item) in body["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if !METHODS.contains(&method.to_ascii_lowercase().as_str()) {
                continue;
            }
            let iam = operation["x-amazon-apigateway-auth"]["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("AWS_IAM"));
            let security = if operation["security"].is_null() {
                &body["security"]
            } else {
                &operation["security"]
            };
            let requirements = items(security);
            if !iam && (requirements.is_empty() || !requirements.into_iter().all(&sigv4)) {
                found.push(format!("{api}: {method} {path} does not require AWS_IAM"));
            }
        }
    }
}

#[test]
fn a_method_without_aws_iam_is_a_violation() {
    fails_with("TokenApi: Auth.DefaultAuthorizer is not AWS_IAM", |t| {
        t["Resources"]["TokenApi"]["Properties"]["Auth"]["DefaultAuthorizer"] = json!("NONE");
    });
    fails_with("BrokerFunction/Token: Auth.Authorizer", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["Events"]["Token"]["Properties"]["Auth"] =
            json!({"Authorizer": "NONE"});
    });
    fails_with("BrokerFunction/Token: no RestApiId", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["Events"]["Token"]["Properties"]
            .as_object_mut()
            .unwrap()
            .remove("RestApiId");
    });
    fails_with("Open: AuthorizationType is not AWS_IAM", |t| {
        t["Resources"]["Open"] = json!({"Type": "AWS::ApiGateway::Method",
            "Properties": {"HttpMethod": "GET", "AuthorizationType": "NONE"}});
    });
    fails_with("BrokerFunction: function URL without AWS_IAM", |t| {
        t["Resources"]["BrokerFunction"]["Properties"]["FunctionUrlConfig"] =
            json!({"AuthType": "NONE"});
    });
    fails_with("Http: AWS::Serverless::HttpApi", |t| {
        t["Resources"]["Http"] = json!({"Type": "AWS::Serverless::HttpApi", "Properties": {}});
    });
}

#[test]
fn openapi_operations_need_a_sigv4_requirement() {
    let body = json!({
        "swagger": "2.0",
        "securityDefinitions": {"sigv4": {"type": "apiKey", "name": "Authorization",
            "in": "header", "x-amazon-apigateway-authtype": "awsSigv4"}},
        "paths": {"/token/{profile}": {
            "get": {"security": [{"sigv4": []}]},
            "options": {"x-amazon-apigateway-auth": {"type": "AWS_IAM"}},
        }},
    });
    let mut good = template();
    good["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body.clone();
    assert_eq!(violations(&good), Vec::<String>::new());

    fails_with(
        "TokenApi: post /token/{profile} does not require AWS_IAM",
        |t| {
            let mut body = body.clone();
            body["paths"]["/token/{profile}"]["post"] = json!({});
            t["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body;
        },
    );
    fails_with(
        "TokenApi: get /token/{profile} does not require AWS_IAM",
        |t| {
            let mut body = body.clone();
            body["paths"]["/token/{profile}"]["get"]["security"] = json!([{"api_key": []}]);
            t["Resources"]["TokenApi"]["Properties"]["DefinitionBody"] = body;
        },
    );
    fails_with("TokenApi: DefinitionUri cannot be checked here", |t| {
        t["Resources"]["TokenApi"]["Properties"]["DefinitionUri"] = json!("api.yaml");
    });
}
