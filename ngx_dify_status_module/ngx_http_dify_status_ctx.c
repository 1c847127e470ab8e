
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The request's context: made once per checked request, found again
 * after an internal redirect, released (its Redis command cancelled,
 * its event removed) with the request's pool or as soon as the request
 * no longer waits.  The codes and the rejection record are here too, so
 * that the limiter, the variables and the metrics need nothing of the
 * phase handler's file.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


static void ngx_http_dify_ctx_cleanup(void *data);


const ngx_str_t  ngx_http_dify_codes[NGX_HTTP_DIFY_NCODES] = {
    ngx_string("not_found"),
    ngx_string("unauthorized"),
    ngx_string("invalid_action"),
    ngx_string("unsupported_media_type"),
    ngx_string("request_entity_too_large"),
    ngx_string("bad_request"),
    ngx_string("invalid_param"),
    ngx_string("too_many_requests"),
    ngx_string("forbidden"),
    ngx_string("service_unavailable"),
    ngx_string("internal_server_error")
};


ngx_http_dify_ctx_t *
ngx_http_dify_ctx_create(ngx_http_request_t *r, ngx_event_handler_pt wait)
{
    ngx_pool_cleanup_t   *cln;
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_dify_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_dify_ctx_cleanup;
    cln->data = ctx;

    /*
     * set by ngx_pcalloc():
     *
     *     ctx->state = NGX_HTTP_DIFY_STATE_NEW;
     */

    ctx->request = r;
    ctx->wait.handler = wait;
    ctx->wait.data = r;
    ctx->wait.log = r->connection->log;

    ngx_http_set_ctx(r, ctx, ngx_http_dify_status_module);

    return ctx;
}


static void
ngx_http_dify_ctx_cleanup(void *data)
{
    ngx_http_dify_ctx_release(data);
}


void
ngx_http_dify_ctx_release(ngx_http_dify_ctx_t *ctx)
{
    ngx_http_dify_limit_release(ctx);

    if (ctx->wait.timer_set) {
        ngx_del_timer(&ctx->wait);
    }

    if (ctx->wait.posted) {
        ngx_delete_posted_event(&ctx->wait);
    }
}


/*
 * The module's context, also after an internal redirect, which clears
 * r->ctx: the pool cleanup still holds it (as the realip module does).
 */

ngx_http_dify_ctx_t *
ngx_http_dify_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t   *cln;
    ngx_http_dify_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_dify_status_module);

    if (ctx != NULL || !(r->internal || r->filter_finalize)) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_dify_ctx_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_dify_status_module);
            return ctx;
        }
    }

    return NULL;
}


void
ngx_http_dify_reject(ngx_http_dify_ctx_t *ctx, ngx_uint_t code,
    ngx_uint_t status, const char *message, size_t len)
{
    if (len == 0) {
        len = ngx_strlen(message);
    }

    len = ngx_min(len, sizeof(ctx->message));

    ngx_memcpy(ctx->message, message, len);
    ctx->message_len = len;

    ctx->code = code;
    ctx->status = status;

    if (ctx->outcome == NGX_HTTP_DIFY_OUTCOME_NONE) {
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_REJECTED;
    }
}
