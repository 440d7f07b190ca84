//! The OpenAPI 3.1 document, generated from the handlers' annotations so it cannot
//! drift from the routes.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, orders, problem, reads, status};

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard gateway", description = "Register, log in, top up, place and read orders. Errors are RFC 9457 problem details."),
    paths(
        auth::register, auth::login,
        orders::create_order, orders::get_order, orders::list_orders,
        reads::balance, reads::deposit, reads::me,
        super::health, super::ready,
    ),
    components(schemas(
        problem::Problem, problem::FieldError,
        auth::RegisterRequest, auth::Registered, auth::LoginRequest, auth::TokenResponse,
        orders::OrderRequest, orders::OrderItem, orders::Accepted, orders::OrderView, orders::OrdersPage, status::OrderStatus,
        reads::DepositRequest, reads::DepositAccepted, reads::Me, reads::Profile, reads::Balance,
    )),
    modifiers(&BearerAuth, &DependencyErrors),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every route that uses the database or the status cache answers 500 when one fails
/// under it, and 503 when one does not answer in time (a problem either way, the cause
/// only in the log); declared once here rather than on each route.
struct DependencyErrors;

impl Modify for DependencyErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let failed = problem("the database or the status cache failed; the cause is logged, not shown");
        let silent = problem(
            "the database or the status cache did not answer in time (no connection free, or the request ran past the reply timeout plus 10 s)",
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/health" {
                continue; // the process alone answers
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses
                    .entry("500".to_string())
                    .or_insert_with(|| failed.clone().into());
                responses
                    .entry("503".to_string())
                    .or_insert_with(|| silent.clone().into());
            }
        }
    }
}

/// `GET /openapi.json`
pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
