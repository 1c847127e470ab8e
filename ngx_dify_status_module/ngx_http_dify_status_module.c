
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The module: directives, the precontent phase handler that checks
 * Dify's batch-status PATCHes (rows 1-7 of the contract), reading of the
 * body, and the JSON answers.  The limiter (rows 8-9) is in
 * ngx_http_dify_status_limit.c.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_IDS_UUID        0
#define NGX_HTTP_DIFY_IDS_ANY         1

#define NGX_HTTP_DIFY_DUPLICATES_ALLOW   0
#define NGX_HTTP_DIFY_DUPLICATES_REJECT  1

#define NGX_HTTP_DIFY_MSG_AUTH_MISSING                                       \
    "Authorization header must be provided and start with 'Bearer'"
#define NGX_HTTP_DIFY_MSG_AUTH_SCHEME                                        \
    "Authorization scheme must be 'Bearer'"
#define NGX_HTTP_DIFY_MSG_AUTH_INVALID                                       \
    "Access token is invalid"
#define NGX_HTTP_DIFY_MSG_BAD_REQUEST                                        \
    "Invalid JSON payload received or JSON payload is empty."
#define NGX_HTTP_DIFY_MSG_BAD_BODY                                           \
    "The request body is malformed."


static ngx_int_t ngx_http_dify_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_dify_check_headers(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    dify_str_t *dataset_id, dify_str_t *action);
static void ngx_http_dify_media_headers(ngx_http_request_t *r,
    dify_media_t *m);
static void ngx_http_dify_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_dify_check_body(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx);
static u_char *ngx_http_dify_body_bytes(ngx_http_request_t *r,
    size_t max, size_t *len);
static void ngx_http_dify_reject_too_large(ngx_http_dify_ctx_t *ctx,
    off_t max);
static ngx_int_t ngx_http_dify_verdict(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
static ngx_int_t ngx_http_dify_answer(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
static void ngx_http_dify_refused(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
static ngx_uint_t ngx_http_dify_refusal(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
static void ngx_http_dify_fail(ngx_http_dify_ctx_t *ctx);
static ngx_int_t ngx_http_dify_send(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
static void ngx_http_dify_wait_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_dify_header_filter(ngx_http_request_t *r);

static ngx_int_t ngx_http_dify_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_dify_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_dify_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_dify_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_dify_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_dify_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_dify_token_prefix(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_dify_init_process(ngx_cycle_t *cycle);
static void ngx_http_dify_exit_process(ngx_cycle_t *cycle);
static void ngx_http_dify_exit_master(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_dify_document_ids[] = {
    { ngx_string("uuid"), NGX_HTTP_DIFY_IDS_UUID },
    { ngx_string("any"), NGX_HTTP_DIFY_IDS_ANY },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dify_duplicate_ids[] = {
    { ngx_string("allow"), NGX_HTTP_DIFY_DUPLICATES_ALLOW },
    { ngx_string("reject"), NGX_HTTP_DIFY_DUPLICATES_REJECT },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dify_fallback[] = {
    { ngx_string("allow"), NGX_HTTP_DIFY_FALLBACK_ALLOW },
    { ngx_string("deny"), NGX_HTTP_DIFY_FALLBACK_DENY },
    { ngx_string("local"), NGX_HTTP_DIFY_FALLBACK_LOCAL },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_dify_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_num_bounds_t  ngx_http_dify_limit_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_command_t  ngx_http_dify_commands[] = {

    { ngx_string("dify_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, enable),
      NULL },

    { ngx_string("dify_status_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("dify_status_max_documents"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, max_documents),
      NULL },

    { ngx_string("dify_status_document_ids"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, document_ids),
      &ngx_http_dify_document_ids },

    { ngx_string("dify_status_duplicate_ids"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, duplicate_ids),
      &ngx_http_dify_duplicate_ids },

    { ngx_string("dify_status_token_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_dify_token_prefix,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dify_status_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_dify_redis_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dify_status_redis_ssl_verify"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, ssl_verify),
      NULL },

    { ngx_string("dify_status_redis_ssl_trusted_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, ssl_trusted_certificate),
      NULL },

    { ngx_string("dify_status_redis_ssl_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, ssl_name),
      NULL },

    { ngx_string("dify_status_redis_ssl_certificate"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, ssl_certificate),
      NULL },

    { ngx_string("dify_status_redis_ssl_certificate_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, ssl_certificate_key),
      NULL },

    { ngx_string("dify_status_redis_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, prefix),
      NULL },

    { ngx_string("dify_status_redis_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, fallback),
      &ngx_http_dify_fallback },

    { ngx_string("dify_status_shm_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_dify_main_conf_t, shm_size),
      NULL },

    { ngx_string("dify_status_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_dify_limit_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("dify_status_limit_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, limit_status),
      &ngx_http_dify_limit_status_bounds },

    { ngx_string("dify_status_limit_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, limit_headers),
      NULL },

    { ngx_string("dify_status_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, dry_run),
      NULL },

    { ngx_string("dify_status_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_dify_loc_conf_t, log_level),
      &ngx_http_dify_log_levels },

    { ngx_string("dify_status_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_dify_metrics_directive,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_dify_status_module_ctx = {
    ngx_http_dify_preconfiguration,        /* preconfiguration */
    ngx_http_dify_postconfiguration,       /* postconfiguration */

    ngx_http_dify_create_main_conf,        /* create main configuration */
    ngx_http_dify_init_main_conf,          /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_dify_create_loc_conf,         /* create location configuration */
    ngx_http_dify_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_dify_status_module = {
    NGX_MODULE_V1,
    &ngx_http_dify_status_module_ctx,      /* module context */
    ngx_http_dify_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_dify_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_dify_exit_process,            /* exit process */
    ngx_http_dify_exit_master,             /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


/*
 * The route as Flask will see it.  proxy_pass without a URI part sends
 * the raw request target on while the URI is unchanged
 * (valid_unparsed_uri), and nothing on Dify's side resolves dot
 * segments: "/status/.." is $uri ".../documents/" here, but Werkzeug
 * dispatches it to the handler with action "..".
 */

static ngx_int_t
ngx_http_dify_flask_route(ngx_http_request_t *r, dify_str_t *dataset_id,
    dify_str_t *action)
{
    size_t   len;
    u_char  *p;

    if (!r->valid_unparsed_uri || r->unparsed_uri.len == 0) {
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool, r->unparsed_uri.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    len = dify_flask_path(r->unparsed_uri.data, r->unparsed_uri.len, p);

    if (!dify_route_match(p, len, dataset_id, action)) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_dify_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    dify_str_t                 dataset_id, action;
    ngx_http_dify_ctx_t       *ctx;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_http_dify_loc_conf_t  *dlcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_dify_get_ctx(r);

    if (ctx != NULL) {
        /*
         * a later entry: the state decides, whatever the location, its
         * dify_status and the method now are
         */
        return ngx_http_dify_verdict(r, ctx);
    }

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (!dlcf->enable || r->method != NGX_HTTP_PATCH) {
        return NGX_DECLINED;
    }

    if (!dify_route_match(r->uri.data, r->uri.len, &dataset_id, &action)) {

        rc = ngx_http_dify_flask_route(r, &dataset_id, &action);

        if (rc != NGX_OK) {
            return rc;          /* NGX_DECLINED: not the route; NGX_ERROR */
        }
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "dify_status handler");

    ctx = ngx_http_dify_ctx_create(r, ngx_http_dify_wait_handler);
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_CHECKED);

    if (ngx_http_dify_check_headers(r, dlcf, ctx, &dataset_id, &action)
        != NGX_OK)
    {
        ctx->state = NGX_HTTP_DIFY_STATE_DECIDED;
        return ngx_http_dify_verdict(r, ctx);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    ctx->state = NGX_HTTP_DIFY_STATE_BODY;
    ctx->max_body = clcf->client_max_body_size;

    rc = ngx_http_read_client_request_body(r, ngx_http_dify_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        /*
         * nginx refused the body at once: its answer, as for any request
         * it refuses; the status is kept for the entry that an error_page
         * may bring
         */
        ctx->status = rc;
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


/* rows 1 to 5 of the contract: what can be told before the body */

static ngx_int_t
ngx_http_dify_check_headers(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    dify_str_t *dataset_id, dify_str_t *action)
{
    dify_str_t         token;
    dify_auth_e        auth;
    dify_media_t       m;
    ngx_table_elt_t   *h;

    ctx->dataset_id.len = dataset_id->len;
    ctx->dataset_id.data = (u_char *) dataset_id->data;
    ctx->action.len = action->len;
    ctx->action.data = (u_char *) action->data;

    if (!dify_is_uuid(dataset_id->data, dataset_id->len)) {
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_NOT_FOUND, NGX_HTTP_NOT_FOUND,
                             "Dataset not found.", 0);
        return NGX_DECLINED;
    }

    h = r->headers_in.authorization;

    auth = dify_parse_authorization(h ? h->value.data : NULL,
                                    h ? h->value.len : 0, &token);

    if (auth != DIFY_AUTH_OK) {
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNAUTHORIZED,
                             NGX_HTTP_UNAUTHORIZED,
                             auth == DIFY_AUTH_MISSING
                             ? NGX_HTTP_DIFY_MSG_AUTH_MISSING
                             : NGX_HTTP_DIFY_MSG_AUTH_SCHEME, 0);
        return NGX_DECLINED;
    }

    /*
     * a token that cannot be a key of this deployment: Dify's own answer
     * to an unknown key, with no Redis call and no quota
     */

    if (dlcf->token_prefix.len
        && (token.len < dlcf->token_prefix.len
            || ngx_memcmp(token.data, dlcf->token_prefix.data,
                          dlcf->token_prefix.len) != 0))
    {
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNAUTHORIZED,
                             NGX_HTTP_UNAUTHORIZED,
                             NGX_HTTP_DIFY_MSG_AUTH_INVALID, 0);
        return NGX_DECLINED;
    }

    /* the raw key goes no further than this hash */

    if (dify_key_hash(token.data, token.len, (char *) ctx->key_hash) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "dify_status: hashing the key failed");
        ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_ERROR;
    }

    ctx->has_key = 1;

    if (!dify_action_is_valid(action->data, action->len)) {
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_INVALID_ACTION,
                             NGX_HTTP_BAD_REQUEST, "Invalid action.", 0);
        return NGX_DECLINED;
    }

    ngx_http_dify_media_headers(r, &m);

    switch (dify_media_verdict(&m)) {

    case DIFY_MEDIA_OK:
        break;

    case DIFY_MEDIA_MISSING:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNSUPPORTED_MEDIA,
                             NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                             "Content-Type must be application/json; "
                             "the request has none.", 0);
        return NGX_DECLINED;

    case DIFY_MEDIA_CONFLICT:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNSUPPORTED_MEDIA,
                             NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                             "Content-Type must be sent once; the request "
                             "has several that differ.", 0);
        return NGX_DECLINED;

    case DIFY_MEDIA_NOT_JSON:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNSUPPORTED_MEDIA,
                             NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                             "Content-Type must be application/json.", 0);
        return NGX_DECLINED;

    default: /* DIFY_MEDIA_ENCODED */
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNSUPPORTED_MEDIA,
                             NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                             "Content-Encoding is not supported; "
                             "send the JSON body unencoded.", 0);
        return NGX_DECLINED;
    }

    if (r->headers_in.content_length_n > (off_t) dlcf->max_body_size) {
        ngx_http_dify_reject_too_large(ctx, (off_t) dlcf->max_body_size);
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * Every Content-Type and Content-Encoding header, in the order received,
 * as proxy_pass forwards them all: nginx's headers_in.content_type is the
 * first Content-Type, gunicorn keeps the last.
 */

static void
ngx_http_dify_media_headers(ngx_http_request_t *r, dify_media_t *m)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    dify_media_init(m);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Content-Type") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Content-Type",
                               sizeof("Content-Type") - 1) == 0)
        {
            dify_media_type(m, h[i].value.data, h[i].value.len);
            continue;
        }

        if (h[i].key.len == sizeof("Content-Encoding") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Content-Encoding",
                               sizeof("Content-Encoding") - 1) == 0)
        {
            dify_media_encoding(m, h[i].value.data, h[i].value.len);
        }
    }
}


static void
ngx_http_dify_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_dify_ctx_t       *ctx;
    ngx_http_dify_loc_conf_t  *dlcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dify_status_module);
    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    /* the body stays for proxy_pass, after an internal redirect too */
    r->preserve_body = 1;

    rc = ngx_http_dify_check_body(r, dlcf, ctx);

    if (rc == NGX_OK) {
        rc = ngx_http_dify_limit_start(r, ctx);

        if (rc == NGX_AGAIN) {
            /* a Redis reply or the timer resumes the request */
            ctx->state = NGX_HTTP_DIFY_STATE_LIMIT;
            r->read_event_handler = ngx_http_test_reading;
            r->write_event_handler = ngx_http_request_empty_handler;
            return;
        }
    }

    ctx->state = NGX_HTTP_DIFY_STATE_DECIDED;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/* rows 5 (a body of unknown length), 6 and 7 */

static ngx_int_t
ngx_http_dify_check_body(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx)
{
    size_t               len;
    u_char              *body;
    dify_body_rc_e       rc;
    dify_body_conf_t     bcf;
    dify_body_result_t   res;

    body = ngx_http_dify_body_bytes(r, dlcf->max_body_size, &len);

    if (body == NULL) {
        if (len == 0) {
            ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return NGX_ERROR;
        }

        ngx_http_dify_reject_too_large(ctx, (off_t) dlcf->max_body_size);
        return NGX_DECLINED;
    }

    bcf.max_documents = dlcf->max_documents;
    bcf.ids_any = (dlcf->document_ids == NGX_HTTP_DIFY_IDS_ANY);
    bcf.reject_duplicates =
                    (dlcf->duplicate_ids == NGX_HTTP_DIFY_DUPLICATES_REJECT);
    bcf.no_fast = 0;

    rc = dify_body_validate(body, len, &bcf, &res);

    switch (rc) {

    case DIFY_BODY_OK:
        ctx->documents = res.documents;
        return NGX_OK;

    case DIFY_BODY_BAD_REQUEST:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_BAD_REQUEST,
                             NGX_HTTP_BAD_REQUEST,
                             NGX_HTTP_DIFY_MSG_BAD_REQUEST, 0);
        return NGX_DECLINED;

    case DIFY_BODY_INVALID_PARAM:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_INVALID_PARAM,
                             NGX_HTTP_BAD_REQUEST, res.message, 0);
        return NGX_DECLINED;

    case DIFY_BODY_TOO_MANY_VALUES:
        /* row 5: too large to parse, counted before anything is built */
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_TOO_LARGE,
                             NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                             res.message, 0);
        return NGX_DECLINED;

    default: /* DIFY_BODY_NOMEM */
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "dify_status: out of memory validating the body");
        ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_ERROR;
    }
}


/*
 * The body in one contiguous buffer, from memory and temp file buffers
 * alike.  NULL with *len == 0 on an error, NULL with *len != 0 when the
 * body is larger than max.
 */

static u_char *
ngx_http_dify_body_bytes(ngx_http_request_t *r, size_t max, size_t *len)
{
    off_t         size;
    u_char       *p, *body;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    *len = 0;

    if (r->request_body == NULL) {
        return (u_char *) "";
    }

    size = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    if (size > (off_t) max) {
        *len = (size_t) size;
        return NULL;
    }

    cl = r->request_body->bufs;

    if (cl != NULL && cl->next == NULL && ngx_buf_in_memory(cl->buf)) {
        *len = (size_t) size;
        return cl->buf->pos;
    }

    body = ngx_pnalloc(r->pool, (size_t) size + 1);
    if (body == NULL) {
        return NULL;
    }

    p = body;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (b->in_file) {
            n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                              b->file_pos);

            if (n != b->file_last - b->file_pos) {
                ngx_log_error(NGX_LOG_CRIT, r->connection->log, 0,
                              "dify_status: short read of the body file \"%V\"",
                              &b->file->name);
                return NULL;
            }

            p += n;
        }
    }

    *len = p - body;

    return body;
}


/* row 5: the body is larger than max bytes */

static void
ngx_http_dify_reject_too_large(ngx_http_dify_ctx_t *ctx, off_t max)
{
    u_char  *p;
    u_char   msg[DIFY_BODY_MESSAGE_LEN];

    p = ngx_snprintf(msg, sizeof(msg),
                     "Request body must not be larger than %O bytes.", max);

    ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_TOO_LARGE,
                         NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                         (const char *) msg, p - msg);
}


/*
 * Every entry of the phase handler after the first: the state decides
 * (see ngx_http_dify_state_e).  A DECIDED request is acted on here: on
 * to the next handler, or the JSON answer.
 */

static ngx_int_t
ngx_http_dify_verdict(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    ngx_http_dify_loc_conf_t  *dlcf;

    switch (ctx->state) {

    case NGX_HTTP_DIFY_STATE_PASSED:
        /* checked once, where it arrived: on to a fallback, say */
        return NGX_DECLINED;

    case NGX_HTTP_DIFY_STATE_REJECTED:
    case NGX_HTTP_DIFY_STATE_FAILED:
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "dify_status: %ui again", ctx->status);

        return ngx_http_dify_answer(r, ctx);

    case NGX_HTTP_DIFY_STATE_BODY:
    case NGX_HTTP_DIFY_STATE_LIMIT:
        /* nginx finalized the request while the module waited */
        ngx_http_dify_refused(r, ctx);
        break;

    default: /* NGX_HTTP_DIFY_STATE_DECIDED */

        if (ctx->status == NGX_HTTP_INTERNAL_SERVER_ERROR) {
            ngx_http_dify_fail(ctx);
            break;
        }

        if (ctx->status == 0) {
            /* passed, limited in dry run, or let through by the fallback */

            ctx->state = NGX_HTTP_DIFY_STATE_PASSED;

            if (ctx->outcome == NGX_HTTP_DIFY_OUTCOME_PASSED
                || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_DRY_RUN
                || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_FB_ALLOWED
                || ctx->outcome == NGX_HTTP_DIFY_OUTCOME_FB_PASSED)
            {
                ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_PASSED);
            }

            return NGX_DECLINED;
        }

        ctx->state = NGX_HTTP_DIFY_STATE_REJECTED;
    }

    ngx_http_dify_metrics_rejected(ctx->code, ctx->status);

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (ctx->has_key) {
        ngx_http_dify_log(dlcf->log_level, r->connection->log,
                          "dify_status: %ui %V \"%*s\", key \"%*s\"",
                          ctx->status, &ngx_http_dify_codes[ctx->code],
                          ctx->message_len, ctx->message,
                          (size_t) 12, ctx->key_hash);

    } else {
        ngx_http_dify_log(dlcf->log_level, r->connection->log,
                          "dify_status: %ui %V \"%*s\"",
                          ctx->status, &ngx_http_dify_codes[ctx->code],
                          ctx->message_len, ctx->message);
    }

    return ngx_http_dify_answer(r, ctx);
}


/*
 * The answer of a REJECTED or FAILED request, sent by the module itself:
 * never an error_page's, whose "=code" would change its status.
 */

static ngx_int_t
ngx_http_dify_answer(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    ngx_int_t  rc;

    if (r->header_sent) {
        /*
         * post_action after the answer, or nginx finalizing the request
         * again once it was sent: nothing more goes out, nothing on
         */
        return NGX_ERROR;
    }

    rc = ngx_http_dify_send(r, ctx);

    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}


/*
 * nginx refused the request while the module waited for its body (or
 * finalized it while the limiter was asked), and an error_page brought
 * it here: the module answers it (400, 413 or 500), never declines it.
 */

static void
ngx_http_dify_refused(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    ngx_uint_t  status;

    /* a Redis reply or the limiter's timer would come too late */
    ngx_http_dify_ctx_release(ctx);

    status = ngx_http_dify_refusal(r, ctx);

    switch (status) {

    case NGX_HTTP_BAD_REQUEST:
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_BAD_REQUEST,
                             NGX_HTTP_BAD_REQUEST,
                             NGX_HTTP_DIFY_MSG_BAD_BODY, 0);
        break;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        ngx_http_dify_reject_too_large(ctx, ctx->max_body);
        break;

    default:
        ngx_http_dify_fail(ctx);
        return;
    }

    ctx->state = NGX_HTTP_DIFY_STATE_REJECTED;
}


/*
 * Why nginx refused the request: the status the body read returned at
 * once, when it did.  Otherwise nginx keeps no trace of it when the
 * error_page has "=" or "=code", and what it counted tells its reasons
 * apart (ngx_http_request_body_chunked_filter(),
 * ngx_http_v2_filter_request_body()).  A client that went away or timed
 * out never comes here: nginx ends such a request on the spot.
 */

static ngx_uint_t
ngx_http_dify_refusal(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    off_t                     size;
    ngx_http_request_body_t  *rb;

    rb = r->request_body;

    if (ctx->status != 0 || rb == NULL) {
        return ctx->status;
    }

#if (NGX_HTTP_V2)
    if (r->stream) {
        size = r->headers_in.content_length_n;

        if (size == -1) {
            /* no length declared: past client_max_body_size */
            return (ctx->max_body && rb->received > ctx->max_body)
                   ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE : 0;
        }

        /* more than declared, or the stream ended short of it */
        return (rb->received > size
                || (r->stream->in_closed && rb->received < size))
               ? NGX_HTTP_BAD_REQUEST : 0;
    }
#endif

    if (r->headers_in.chunked && rb->chunked != NULL) {
        /* a chunk past client_max_body_size, or else a malformed one */
        size = r->headers_in.content_length_n + rb->chunked->size;

        return (ctx->max_body && size > ctx->max_body)
               ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE : NGX_HTTP_BAD_REQUEST;
    }

    /* a body of a declared length: refused only when nginx failed */

    return 0;
}


/* the module could not decide: Dify's own answer to a failure */

static void
ngx_http_dify_fail(ngx_http_dify_ctx_t *ctx)
{
    ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_INTERNAL_ERROR,
                         NGX_HTTP_INTERNAL_SERVER_ERROR,
                         "Internal Server Error", 0);

    ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FAILED;
    ctx->state = NGX_HTTP_DIFY_STATE_FAILED;
}


static ngx_int_t
ngx_http_dify_send(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    size_t            len;
    u_char            message[DIFY_BODY_MESSAGE_LEN + 1];
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    /* an answer before the body was read: nginx's own 413 does the same */
    r->expect_tested = 1;

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        /*
         * a malformed chunked body: answered all the same, as nginx's
         * special responses are, and the connection closed
         */
        r->keepalive = 0;
    }

    /* the module's status, not an error_page's "=code" */
    r->err_status = 0;

    if (ctx->status == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        r->keepalive = 0;
    }

    ngx_memcpy(message, ctx->message, ctx->message_len);
    message[ctx->message_len] = '\0';

    /* 80 bytes for the envelope and status, 2x for escapes */
    len = 80 + ngx_http_dify_codes[ctx->code].len + 2 * ctx->message_len;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = dify_json_envelope(b->pos, len, (int) ctx->status,
                             (const char *) ngx_http_dify_codes[ctx->code].data,
                             (const char *) message);
    if (len == 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = b->pos + len;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = ctx->status;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = sizeof("application/json") - 1;
    r->headers_out.content_type_lowcase = NULL;

    if (ctx->status == NGX_HTTP_UNAUTHORIZED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "WWW-Authenticate");
        ngx_str_set(&h->value, "Bearer realm=\"api\"");
        r->headers_out.www_authenticate = h;
    }

    rc = ngx_http_dify_limit_retry_after(r, ctx);
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the event the limiter posts once it has decided */

static void
ngx_http_dify_wait_handler(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_http_request_t   *r;
    ngx_http_dify_ctx_t  *ctx;

    r = ev->data;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ctx = ngx_http_get_module_ctx(r, ngx_http_dify_status_module);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "dify_status wait handler");

    ctx->state = NGX_HTTP_DIFY_STATE_DECIDED;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_dify_header_filter(ngx_http_request_t *r)
{
    ngx_http_dify_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_dify_get_ctx(r);

    if (ctx != NULL && ctx->has_gcra && !ctx->headers_added) {
        ctx->headers_added = 1;

        if (ngx_http_dify_limit_headers(r, ctx) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_dify_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_dify_add_variables(cf);
}


static ngx_int_t
ngx_http_dify_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_dify_handler;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_dify_header_filter;

    return NGX_OK;
}


static void *
ngx_http_dify_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_dify_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis = NULL;
     *     mcf->shm_zone = NULL;
     *     mcf->metrics_zone = NULL;
     *     mcf->ssl_trusted_certificate = { 0, NULL };
     *     mcf->ssl_name = { 0, NULL };
     *     mcf->ssl_certificate = { 0, NULL };
     *     mcf->ssl_certificate_key = { 0, NULL };
     */

    mcf->shm_size = NGX_CONF_UNSET_SIZE;
    mcf->ssl_verify = NGX_CONF_UNSET;

    return mcf;
}


static char *
ngx_http_dify_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_dify_main_conf_t *mcf = conf;

    ngx_conf_init_size_value(mcf->shm_size, 10 * 1024 * 1024);

    if (mcf->shm_size < 8 * ngx_pagesize) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "dify_status_shm_size must be at least %uzk",
                           (size_t) (8 * ngx_pagesize) / 1024);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_dify_metrics_init_conf(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_dify_redis_init_conf(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_dify_limit_init_conf(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_dify_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_dify_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->limits = NULL;
     *     conf->prefix = { 0, NULL };
     *     conf->token_prefix = { 0, NULL };
     */

    conf->enable = NGX_CONF_UNSET;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;
    conf->max_documents = NGX_CONF_UNSET_UINT;
    conf->document_ids = NGX_CONF_UNSET_UINT;
    conf->duplicate_ids = NGX_CONF_UNSET_UINT;
    conf->limit_set = NGX_CONF_UNSET;
    conf->limit_status = NGX_CONF_UNSET_UINT;
    conf->limit_headers = NGX_CONF_UNSET;
    conf->fallback = NGX_CONF_UNSET_UINT;
    conf->dry_run = NGX_CONF_UNSET;
    conf->log_level = NGX_CONF_UNSET_UINT;

    return conf;
}


static char *
ngx_http_dify_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_dify_loc_conf_t *prev = parent;
    ngx_http_dify_loc_conf_t *conf = child;

    ngx_http_dify_main_conf_t  *mcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              64 * 1024);
    ngx_conf_merge_uint_value(conf->max_documents, prev->max_documents, 1000);
    ngx_conf_merge_uint_value(conf->document_ids, prev->document_ids,
                              NGX_HTTP_DIFY_IDS_UUID);
    ngx_conf_merge_uint_value(conf->duplicate_ids, prev->duplicate_ids,
                              NGX_HTTP_DIFY_DUPLICATES_ALLOW);
    ngx_conf_merge_str_value(conf->token_prefix, prev->token_prefix, "");

    if (conf->limit_set == NGX_CONF_UNSET) {
        conf->limit_set = prev->limit_set;
        conf->limits = prev->limits;
    }

    ngx_conf_merge_value(conf->limit_set, prev->limit_set, 0);
    ngx_conf_merge_uint_value(conf->limit_status, prev->limit_status,
                              NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_value(conf->limit_headers, prev->limit_headers, 1);
    ngx_conf_merge_uint_value(conf->fallback, prev->fallback,
                              NGX_HTTP_DIFY_FALLBACK_ALLOW);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_str_value(conf->prefix, prev->prefix, "dify:status:");

    conf->prefix_crc = ngx_crc32_short(conf->prefix.data, conf->prefix.len);

    /* the limiter's keys carry their own hash tag: one slot per key */

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dify_status_module);

    if (mcf->redis_cluster
        && (ngx_strlchr(conf->prefix.data,
                        conf->prefix.data + conf->prefix.len, '{')
            != NULL
            || ngx_strlchr(conf->prefix.data,
                           conf->prefix.data + conf->prefix.len, '}')
               != NULL))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "dify_status_redis_prefix \"%V\" cannot hold "
                           "\"{\" or \"}\" with a Redis Cluster: the "
                           "module puts each key's hash tag there",
                           &conf->prefix);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* dify_status_token_prefix string | off */

static char *
ngx_http_dify_token_prefix(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dify_loc_conf_t *dlcf = conf;

    ngx_str_t  *value;

    if (dlcf->token_prefix.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_strcmp(value[1].data, "off") == 0) {
        ngx_str_set(&dlcf->token_prefix, "");
        return NGX_CONF_OK;
    }

    dlcf->token_prefix = value[1];

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_dify_init_process(ngx_cycle_t *cycle)
{
    ngx_http_dify_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_dify_status_module);

    if (mcf == NULL) {
        return NGX_OK;
    }

    if (ngx_http_dify_log_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_dify_redis_init_process(cycle, mcf);
}


static void
ngx_http_dify_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_dify_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_dify_status_module);

    if (mcf == NULL) {
        return;
    }

    ngx_http_dify_limit_exit_process(cycle);

    ngx_http_dify_redis_exit_process(cycle, mcf);

    ngx_http_dify_log_exit_process(cycle);

    dify_key_cleanup();
}


static void
ngx_http_dify_exit_master(ngx_cycle_t *cycle)
{
    dify_key_cleanup();
}
