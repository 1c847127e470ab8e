
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The $dify_status* variables: what the module decided about a request,
 * for access logs, maps and headers.  None of them ever holds the API
 * key itself.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_VAR_KEY_LEN  12      /* hex digits of the hash shown */


static ngx_int_t ngx_http_dify_variable_status(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dify_variable_code(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dify_variable_str(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dify_variable_documents(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dify_variable_key(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_dify_variable_remaining(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_http_dify_ctx_t *ngx_http_dify_variable_ctx(ngx_http_request_t *r);
static ngx_int_t ngx_http_dify_variable_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uint64_t n);
static void ngx_http_dify_variable_set(ngx_http_variable_value_t *v,
    u_char *data, size_t len);


static ngx_http_variable_t  ngx_http_dify_vars[] = {

    { ngx_string("dify_status"), NULL,
      ngx_http_dify_variable_status, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_code"), NULL,
      ngx_http_dify_variable_code, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_action"), NULL,
      ngx_http_dify_variable_str,
      offsetof(ngx_http_dify_ctx_t, action), NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_dataset_id"), NULL,
      ngx_http_dify_variable_str,
      offsetof(ngx_http_dify_ctx_t, dataset_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_documents"), NULL,
      ngx_http_dify_variable_documents, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_key"), NULL,
      ngx_http_dify_variable_key, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_remaining"), NULL,
      ngx_http_dify_variable_remaining, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("dify_status_limit"), NULL,
      ngx_http_dify_variable_str,
      offsetof(ngx_http_dify_ctx_t, limit_name), NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/* indexed by ngx_http_dify_outcome_e */
static ngx_str_t  ngx_http_dify_outcomes[] = {
    ngx_null_string,
    ngx_string("passed"),
    ngx_string("rejected"),
    ngx_string("limited"),
    ngx_string("blocked"),
    ngx_string("dry_run_limited"),
    ngx_string("fallback_allowed"),
    ngx_string("fallback_denied"),
    ngx_string("fallback_passed"),
    ngx_string("fallback_limited"),
    ngx_string("failed")
};


static ngx_int_t
ngx_http_dify_variable_status(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t            *s;
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    if (ctx == NULL
        || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_NONE
        || ctx->outcome >= sizeof(ngx_http_dify_outcomes) / sizeof(ngx_str_t))
    {
        v->not_found = 1;
        return NGX_OK;
    }

    s = &ngx_http_dify_outcomes[ctx->outcome];

    ngx_http_dify_variable_set(v, s->data, s->len);

    return NGX_OK;
}


static ngx_int_t
ngx_http_dify_variable_code(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t            code;
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    /* the code of the error response the module sent, if any */

    switch (ctx->outcome) {

    case NGX_HTTP_DIFY_OUTCOME_REJECTED:
    case NGX_HTTP_DIFY_OUTCOME_LIMITED:
    case NGX_HTTP_DIFY_OUTCOME_BLOCKED:
    case NGX_HTTP_DIFY_OUTCOME_FB_DENIED:
    case NGX_HTTP_DIFY_OUTCOME_FB_LIMITED:
    case NGX_HTTP_DIFY_OUTCOME_FAILED:
        code = ctx->code;
        break;

    default: /* none, or the request went through */
        code = NGX_HTTP_DIFY_NCODES;
    }

    if (code >= NGX_HTTP_DIFY_NCODES) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_dify_variable_set(v, ngx_http_dify_codes[code].data,
                               ngx_http_dify_codes[code].len);

    return NGX_OK;
}


/*
 * $dify_status_action and $dify_status_dataset_id: the parts of the
 * matched URI as they came, valid or not; they live in the request's
 * pool, as the URI does.
 */

static ngx_int_t
ngx_http_dify_variable_str(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t            *s;
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((u_char *) ctx + data);

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_dify_variable_set(v, s->data, s->len);

    return NGX_OK;
}


static ngx_int_t
ngx_http_dify_variable_documents(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    /*
     * the count is known once the body has passed validation, that is
     * for every outcome but "rejected" (rows 1-7 of the contract) and
     * "failed"
     */

    if (ctx == NULL
        || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_NONE
        || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_REJECTED
        || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_FAILED)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_dify_variable_number(r, v, ctx->documents);
}


/* the first hex digits of the key's SHA-256, never the key */

static ngx_int_t
ngx_http_dify_variable_key(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    if (ctx == NULL || !ctx->has_key) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_dify_variable_set(v, ctx->key_hash, NGX_HTTP_DIFY_VAR_KEY_LEN);

    return NGX_OK;
}


static ngx_int_t
ngx_http_dify_variable_remaining(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_dify_variable_ctx(r);

    if (ctx == NULL || !ctx->has_gcra) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_dify_variable_number(r, v, ctx->gcra.remaining);
}


/* the main request's context, also after an internal redirect */

static ngx_http_dify_ctx_t *
ngx_http_dify_variable_ctx(ngx_http_request_t *r)
{
    return ngx_http_dify_get_ctx(r->main);
}


static ngx_int_t
ngx_http_dify_variable_number(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uint64_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_http_dify_variable_set(v, p, ngx_sprintf(p, "%uL", n) - p);

    return NGX_OK;
}


static void
ngx_http_dify_variable_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->data = data;
}


ngx_int_t
ngx_http_dify_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_dify_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}
