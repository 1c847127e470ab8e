
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The limiter (rows 8, 8b and 9 of the contract): one GCRA decision per
 * request, made atomically by a script in Redis and shared by the whole
 * fleet, with a shadow of each key's state in shared memory.
 *
 * The shadow serves two ends.  While Redis answers, it lets every
 * worker reject a key that is certainly limited without asking Redis:
 * the TAT only grows between replies (other nodes' requests can only
 * push it further), so a request the shadow refuses, Redis would refuse
 * too.  While Redis does not answer, "dify_status_redis_fallback local"
 * goes on enforcing the key's last known limit from the same state.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_NODE_IDLE  60000          /* in ms, before expiry */


/*
 * What a shadow is the shadow of: the state in Redis (the key under a
 * prefix) as one location's default limit sees it.  Locations with other
 * prefixes or defaults keep shadows of their own.  Zeroed before it is
 * filled, so that it compares with ngx_memcmp().
 */
typedef struct {
    u_char                     key[DIFY_KEY_HASH_LEN];
    uint32_t                   prefix;          /* crc32 of the prefix */
    uint32_t                   prefix_len;
    dify_gcra_limit_t          deflt;
} ngx_http_dify_node_key_t;


typedef struct {
    u_char                     color;
    u_char                     known;           /* limit seen in Redis */
    u_char                     dummy[2];
    ngx_msec_t                 last;            /* last use */
    ngx_queue_t                queue;
    int64_t                    tat;             /* in us, local clock */
    dify_gcra_limit_t          limit;
    ngx_http_dify_node_key_t   key;
} ngx_http_dify_node_t;


typedef struct {
    ngx_rbtree_t               rbtree;
    ngx_rbtree_node_t          sentinel;
    ngx_queue_t                queue;           /* LRU, most recent first */
} ngx_http_dify_shctx_t;


typedef struct {
    ngx_http_dify_shctx_t     *sh;
    ngx_slab_pool_t           *shpool;
} ngx_http_dify_zone_t;


static ngx_int_t ngx_http_dify_limit_send(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    ngx_msec_t timeout);
static void ngx_http_dify_limit_reply(redisReply *reply, void *data);
static void ngx_http_dify_limit_decided(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    ngx_uint_t fallback);
static void ngx_http_dify_limit_fallback(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx);
static ngx_int_t ngx_http_dify_limit_cached(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx, int64_t now);
static void ngx_http_dify_limit_shadow(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx, int64_t now);
static uint32_t ngx_http_dify_node_key(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx, ngx_http_dify_node_key_t *nk);
static ngx_http_dify_node_t *ngx_http_dify_node_lookup(
    ngx_http_dify_zone_t *zone, ngx_http_dify_node_key_t *nk,
    uint32_t hash);
static ngx_http_dify_node_t *ngx_http_dify_node_create(
    ngx_http_dify_zone_t *zone, ngx_http_dify_node_key_t *nk,
    uint32_t hash);
static void ngx_http_dify_node_expire(ngx_http_dify_zone_t *zone,
    ngx_uint_t force);
static void ngx_http_dify_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_dify_limit_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
static int64_t ngx_http_dify_now(void);
static ngx_int_t ngx_http_dify_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_dify_zone_t *ngx_http_dify_zone(ngx_http_request_t *r);


ngx_int_t
ngx_http_dify_limit_start(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    int64_t                     now;
    ngx_http_dify_loc_conf_t   *dlcf;
    ngx_http_dify_main_conf_t  *mcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (!dlcf->limit_set) {
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_PASSED;
        return NGX_OK;
    }

    ctx->cost = 1;

    if (dlcf->cost == NGX_HTTP_DIFY_COST_DOCUMENTS && ctx->documents > 1) {
        ctx->cost = ctx->documents;
    }

    now = ngx_http_dify_now();

    if (ngx_http_dify_limit_cached(r, ctx, now) == NGX_OK) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_LIMITED_CACHED);
        ngx_http_dify_limit_decided(r, dlcf, ctx, 0);
        return NGX_OK;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_dify_status_module);

    /* the Redis connection times the command from when it is written */

    if (ngx_http_dify_limit_send(r, dlcf, ctx, mcf->redis->timeout)
        != NGX_OK)
    {
        ngx_http_dify_limit_fallback(r, dlcf, ctx);
        return NGX_OK;
    }

    return NGX_AGAIN;
}


/*
 * The script with 2 {prefix}{hash}:tat {prefix}{hash}:limit rate period
 * burst cost.  The hash tag keeps a key's state and its override in one
 * Redis Cluster slot.
 */

static ngx_int_t
ngx_http_dify_limit_send(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    ngx_msec_t timeout)
{
    u_char                     *p, *tat, *limit, *num;
    size_t                      len, argvlen[7];
    const char                 *argv[7];
    ngx_http_dify_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_dify_status_module);

    /* "{prefix}{hash}", then ":tat" or ":limit" */
    len = dlcf->prefix.len + 1 + DIFY_KEY_HASH_LEN + 1;

    tat = ngx_pnalloc(r->pool, 2 * len + sizeof(":tat:limit") - 1
                               + 4 * NGX_INT64_LEN);
    if (tat == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(tat, dlcf->prefix.data, dlcf->prefix.len);
    *p++ = '{';
    p = ngx_cpymem(p, ctx->key_hash, DIFY_KEY_HASH_LEN);
    *p++ = '}';
    limit = ngx_cpymem(p, ":tat", sizeof(":tat") - 1);
    argvlen[1] = limit - tat;

    p = ngx_cpymem(limit, tat, len);
    p = ngx_cpymem(p, ":limit", sizeof(":limit") - 1);
    argvlen[2] = p - limit;

    num = p;

    argv[0] = "2";
    argvlen[0] = 1;
    argv[1] = (const char *) tat;
    argv[2] = (const char *) limit;

    argv[3] = (const char *) num;
    p = ngx_sprintf(num, "%uL", dlcf->limit.rate);
    argvlen[3] = p - num;

    num = p;
    argv[4] = (const char *) num;
    p = ngx_sprintf(num, "%uL", dlcf->limit.period);
    argvlen[4] = p - num;

    num = p;
    argv[5] = (const char *) num;
    p = ngx_sprintf(num, "%uL", dlcf->limit.burst);
    argvlen[5] = p - num;

    num = p;
    argv[6] = (const char *) num;
    p = ngx_sprintf(num, "%uL", ctx->cost);
    argvlen[6] = p - num;

    ctx->cmd = ngx_http_dify_redis_eval(mcf->rs, mcf->script,
                                        ngx_http_dify_limit_reply, ctx,
                                        timeout, 7, argv, argvlen);
    if (ctx->cmd == NULL) {
        return NGX_ERROR;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "dify_status limit: cost %uL, timeout %M ms",
                   ctx->cost, timeout);

    return NGX_OK;
}


/*
 * Called by the command layer exactly once per command: with the reply,
 * or with NULL when none came in time.  It decides and posts ctx->wait,
 * so that the request goes on outside of the Redis connection.
 */

static void
ngx_http_dify_limit_reply(redisReply *reply, void *data)
{
    ngx_http_dify_ctx_t *ctx = data;

    size_t                     err_len;
    const char                *err;
    dify_reply_rc_e            rc;
    ngx_http_request_t        *r;
    ngx_http_dify_loc_conf_t  *dlcf;

    r = ctx->request;
    ctx->cmd = NULL;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (reply == NULL) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "dify_status limit: no reply in time, "
                       "or the connection was lost");
        ngx_http_dify_limit_fallback(r, dlcf, ctx);
        goto resume;
    }

    err = NULL;
    err_len = 0;

    rc = dify_gcra_parse_reply(reply, &ctx->gcra, &err, &err_len);

    /* a NOSCRIPT here: the script could not be loaded in time */

    if (rc != DIFY_REPLY_OK && reply->type == REDIS_REPLY_ERROR) {
        /* counted and logged, once, by the command layer */
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "dify_status limit: error reply: \"%*s\"",
                       err_len, err ? err : "");
        ngx_http_dify_limit_fallback(r, dlcf, ctx);
        goto resume;
    }

    if (rc != DIFY_REPLY_OK) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "dify_status: unexpected reply from redis: \"%*s\"",
                      err_len, err ? err : "");

        ngx_http_dify_limit_fallback(r, dlcf, ctx);
        goto resume;
    }

    ngx_http_dify_limit_shadow(r, ctx, ngx_http_dify_now());
    ngx_http_dify_limit_decided(r, dlcf, ctx, 0);

resume:

    ngx_post_event(&ctx->wait, &ngx_posted_events);
}


/* turns ctx->gcra into the request's outcome */

static void
ngx_http_dify_limit_decided(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx,
    ngx_uint_t fallback)
{
    u_char              *p;
    uint64_t             seconds;
    dify_gcra_result_t  *res;
    u_char               msg[DIFY_BODY_MESSAGE_LEN];

    res = &ctx->gcra;
    ctx->has_gcra = 1;

    if (res->verdict == DIFY_GCRA_ALLOWED) {
        ctx->outcome = fallback ? NGX_HTTP_DIFY_OUTCOME_FB_PASSED
                                : NGX_HTTP_DIFY_OUTCOME_PASSED;
        return;
    }

    if (dlcf->dry_run) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_DRY_RUN_LIMITED);

        ngx_log_error(dlcf->log_level, r->connection->log, 0,
                      "dify_status: dry run, key \"%*s\" would be %s",
                      (size_t) 12, ctx->key_hash,
                      res->verdict == DIFY_GCRA_BLOCKED ? "blocked"
                                                        : "limited");

        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_DRY_RUN;
        return;
    }

    if (res->verdict == DIFY_GCRA_BLOCKED) {
        ctx->has_gcra = 0;
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_BLOCKED;
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_FORBIDDEN, NGX_HTTP_FORBIDDEN,
                             "Insufficient permissions.", 0);
        return;
    }

    ngx_http_dify_metrics_inc(fallback
                              ? NGX_HTTP_DIFY_M_FALLBACK_LOCAL_LIMITED
                              : NGX_HTTP_DIFY_M_LIMITED);

    ctx->outcome = fallback ? NGX_HTTP_DIFY_OUTCOME_FB_LIMITED
                            : NGX_HTTP_DIFY_OUTCOME_LIMITED;

    if (res->verdict == DIFY_GCRA_NEVER) {
        p = ngx_snprintf(msg, sizeof(msg),
                         "This request costs %uL, more than this API key "
                         "may ever spend at once (%uL); "
                         "send smaller batches.",
                         ctx->cost, res->limit.burst);

    } else {
        seconds = dify_gcra_retry_seconds(res);

        p = ngx_snprintf(msg, sizeof(msg),
                         "Rate limit exceeded for this API key; "
                         "retry in %uL second%s.",
                         seconds, seconds == 1 ? "" : "s");
    }

    ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_TOO_MANY_REQUESTS,
                         dlcf->limit_status, (const char *) msg, p - msg);
}


/* Redis did not answer in time, or could not be asked */

static void
ngx_http_dify_limit_fallback(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_ctx_t *ctx)
{
    int64_t                    now, tat;
    uint32_t                   hash;
    ngx_http_dify_node_t      *node;
    ngx_http_dify_zone_t      *zone;
    ngx_http_dify_node_key_t   nk;

    switch (dlcf->fallback) {

    case NGX_HTTP_DIFY_FALLBACK_DENY:
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_DENY);
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FB_DENIED;
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNAVAILABLE,
                             NGX_HTTP_SERVICE_UNAVAILABLE,
                             "The rate limiter is unavailable; "
                             "retry in a moment.", 0);
        return;

    case NGX_HTTP_DIFY_FALLBACK_LOCAL:
        break;

    default: /* NGX_HTTP_DIFY_FALLBACK_ALLOW */
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_ALLOW);
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FB_ALLOWED;
        return;
    }

    zone = ngx_http_dify_zone(r);
    now = ngx_http_dify_now();
    hash = ngx_http_dify_node_key(r, ctx, &nk);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_dify_node_lookup(zone, &nk, hash);

    if (node == NULL) {
        node = ngx_http_dify_node_create(zone, &nk, hash);
    }

    if (node == NULL) {
        /* no room even after expiry: decide from a fresh state */
        tat = now;

        ngx_shmtx_unlock(&zone->shpool->mutex);
        dify_gcra_decide(&tat, now, &dlcf->limit, ctx->cost, &ctx->gcra);

    } else {
        if (!node->known) {
            node->limit = dlcf->limit;
        }

        node->last = ngx_current_msec;
        dify_gcra_decide(&node->tat, now, &node->limit, ctx->cost,
                         &ctx->gcra);

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }

    if (ctx->gcra.verdict == DIFY_GCRA_ALLOWED) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_LOCAL_PASSED);
    }

    ngx_http_dify_limit_decided(r, dlcf, ctx, 1);
}


/*
 * NGX_OK when the shadow says the key is certainly limited (or the
 * request can never pass): ctx->gcra is then the answer.
 */

static ngx_int_t
ngx_http_dify_limit_cached(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx,
    int64_t now)
{
    int64_t                tat;
    uint32_t                   hash;
    ngx_http_dify_node_t      *node;
    ngx_http_dify_zone_t      *zone;
    ngx_http_dify_node_key_t   nk;

    zone = ngx_http_dify_zone(r);
    hash = ngx_http_dify_node_key(r, ctx, &nk);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_dify_node_lookup(zone, &nk, hash);

    if (node == NULL || !node->known) {
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_DECLINED;
    }

    tat = node->tat;
    ctx->gcra.limit = node->limit;

    ngx_shmtx_unlock(&zone->shpool->mutex);

    dify_gcra_decide(&tat, now, &ctx->gcra.limit, ctx->cost, &ctx->gcra);

    if (ctx->gcra.verdict == DIFY_GCRA_ALLOWED) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* after a reply: the shadow takes Redis's TAT and the key's limit */

static void
ngx_http_dify_limit_shadow(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx,
    int64_t now)
{
    uint32_t                   hash;
    ngx_http_dify_node_t      *node;
    ngx_http_dify_zone_t      *zone;
    ngx_http_dify_node_key_t   nk;

    if (ctx->gcra.verdict == DIFY_GCRA_BLOCKED) {
        return;
    }

    zone = ngx_http_dify_zone(r);
    hash = ngx_http_dify_node_key(r, ctx, &nk);

    ngx_shmtx_lock(&zone->shpool->mutex);

    node = ngx_http_dify_node_lookup(zone, &nk, hash);

    if (node == NULL) {
        node = ngx_http_dify_node_create(zone, &nk, hash);
    }

    if (node != NULL) {
        node->known = 1;
        node->limit = ctx->gcra.limit;
        node->tat = now + (int64_t) ctx->gcra.reset;
        node->last = ngx_current_msec;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
}


ngx_int_t
ngx_http_dify_limit_headers(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    size_t                     len;
    ngx_http_dify_loc_conf_t  *dlcf;
    u_char                     buf[128];

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (!dlcf->limit_headers) {
        return NGX_OK;
    }

    len = dify_gcra_policy_header((char *) buf, sizeof(buf),
                                  &ctx->gcra.limit);

    if (len != 0
        && ngx_http_dify_limit_header(r, "RateLimit-Policy", buf, len)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = dify_gcra_ratelimit_header((char *) buf, sizeof(buf), &ctx->gcra);

    if (len != 0
        && ngx_http_dify_limit_header(r, "RateLimit", buf, len) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_dify_limit_retry_after(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx)
{
    u_char    *p;
    uint64_t   seconds;
    u_char     buf[NGX_INT64_LEN];

    if (ctx->code == NGX_HTTP_DIFY_UNAVAILABLE) {
        seconds = 1;

    } else if (ctx->code == NGX_HTTP_DIFY_TOO_MANY_REQUESTS
               && ctx->gcra.verdict == DIFY_GCRA_LIMITED)
    {
        seconds = dify_gcra_retry_seconds(&ctx->gcra);

    } else {
        return NGX_OK;
    }

    p = ngx_sprintf(buf, "%uL", seconds);

    return ngx_http_dify_limit_header(r, "Retry-After", buf, p - buf);
}


/* adds a response header, its value copied into the request's pool */

static ngx_int_t
ngx_http_dify_limit_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, len);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NGX_ERROR;
    }

    ngx_memcpy(h->value.data, value, len);
    h->value.len = len;

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);

    return NGX_OK;
}


/*
 * The tree's key: 32 bits of the key's SHA-256 (already uniform), mixed
 * with the prefix's CRC and the default limit; ngx_memcmp() of the whole
 * node key settles collisions.
 */

static uint32_t
ngx_http_dify_node_key(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx,
    ngx_http_dify_node_key_t *nk)
{
    ngx_int_t                  bits;
    ngx_http_dify_loc_conf_t  *dlcf;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    ngx_memzero(nk, sizeof(ngx_http_dify_node_key_t));

    ngx_memcpy(nk->key, ctx->key_hash, DIFY_KEY_HASH_LEN);
    nk->prefix = dlcf->prefix_crc;
    nk->prefix_len = dlcf->prefix.len;
    nk->deflt = dlcf->limit;

    bits = ngx_hextoi(ctx->key_hash, 8);

    return (uint32_t) bits ^ dlcf->prefix_crc
           ^ (uint32_t) (dlcf->limit.rate * 2654435761u)
           ^ (uint32_t) (dlcf->limit.period << 24)
           ^ (uint32_t) (dlcf->limit.burst * 40503u);
}


static ngx_http_dify_node_t *
ngx_http_dify_node_lookup(ngx_http_dify_zone_t *zone,
    ngx_http_dify_node_key_t *nk, uint32_t hash)
{
    ngx_int_t              rc;
    ngx_rbtree_node_t     *node, *sentinel;
    ngx_http_dify_node_t  *dn;

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        dn = (ngx_http_dify_node_t *) &node->color;

        rc = ngx_memcmp(nk, &dn->key, sizeof(ngx_http_dify_node_key_t));

        if (rc == 0) {
            ngx_queue_remove(&dn->queue);
            ngx_queue_insert_head(&zone->sh->queue, &dn->queue);
            return dn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_http_dify_node_t *
ngx_http_dify_node_create(ngx_http_dify_zone_t *zone,
    ngx_http_dify_node_key_t *nk, uint32_t hash)
{
    size_t                 size;
    ngx_rbtree_node_t     *node;
    ngx_http_dify_node_t  *dn;

    ngx_http_dify_node_expire(zone, 0);

    size = offsetof(ngx_rbtree_node_t, color)
           + sizeof(ngx_http_dify_node_t);

    node = ngx_slab_alloc_locked(zone->shpool, size);

    if (node == NULL) {
        ngx_http_dify_node_expire(zone, 1);

        node = ngx_slab_alloc_locked(zone->shpool, size);
        if (node == NULL) {
            ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                          "dify_status: could not allocate a key state in "
                          "shared memory, consider a larger "
                          "dify_status_shm_size");
            return NULL;
        }
    }

    node->key = hash;

    dn = (ngx_http_dify_node_t *) &node->color;

    dn->known = 0;
    dn->tat = 0;
    dn->last = ngx_current_msec;
    ngx_memzero(&dn->limit, sizeof(dify_gcra_limit_t));
    ngx_memcpy(&dn->key, nk, sizeof(ngx_http_dify_node_key_t));

    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &dn->queue);

    return dn;
}


/*
 * Frees up to two states idle for a minute whose bucket is full again
 * (nothing is lost: Redis, or a fresh state, knows the same), or with
 * force the least recently used one whatever its state.
 */

static void
ngx_http_dify_node_expire(ngx_http_dify_zone_t *zone, ngx_uint_t force)
{
    int64_t                now;
    ngx_uint_t             n;
    ngx_queue_t           *q;
    ngx_msec_int_t         idle;
    ngx_rbtree_node_t     *node;
    ngx_http_dify_node_t  *dn;

    now = ngx_http_dify_now();

    for (n = 0; n < 2; n++) {

        if (ngx_queue_empty(&zone->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&zone->sh->queue);
        dn = ngx_queue_data(q, ngx_http_dify_node_t, queue);

        if (!force) {
            idle = (ngx_msec_int_t) (ngx_current_msec - dn->last);

            if (idle < NGX_HTTP_DIFY_NODE_IDLE || dn->tat > now) {
                return;
            }
        }

        ngx_queue_remove(q);

        node = (ngx_rbtree_node_t *)
                   ((u_char *) dn - offsetof(ngx_rbtree_node_t, color));

        ngx_rbtree_delete(&zone->sh->rbtree, node);
        ngx_slab_free_locked(zone->shpool, node);

        if (force) {
            return;
        }
    }
}


static void
ngx_http_dify_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t     **p;
    ngx_http_dify_node_t   *dn, *dnt;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else { /* node->key == temp->key */

            dn = (ngx_http_dify_node_t *) &node->color;
            dnt = (ngx_http_dify_node_t *) &temp->color;

            p = (ngx_memcmp(&dn->key, &dnt->key,
                            sizeof(ngx_http_dify_node_key_t)) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* the local clock, in microseconds (the cached time: ms resolution) */

static int64_t
ngx_http_dify_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (int64_t) tp->sec * 1000000 + (int64_t) tp->msec * 1000;
}


static ngx_http_dify_zone_t *
ngx_http_dify_zone(ngx_http_request_t *r)
{
    ngx_http_dify_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_dify_status_module);

    return mcf->shm_zone->data;
}


static ngx_int_t
ngx_http_dify_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_dify_zone_t *ozone = data;

    ngx_http_dify_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;
        return NGX_OK;
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return NGX_OK;
    }

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_dify_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_dify_rbtree_insert_value);

    ngx_queue_init(&zone->sh->queue);

    zone->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_dify_limit_init_conf(ngx_conf_t *cf, ngx_http_dify_main_conf_t *mcf)
{
    ngx_str_t              name;
    ngx_http_dify_zone_t  *zone;

    if (!mcf->limit_used) {
        return NGX_OK;
    }

    if (mcf->redis == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dify_status_limit\" requires "
                           "\"dify_status_redis\" in the http block");
        return NGX_ERROR;
    }

    mcf->script = ngx_http_dify_redis_script(cf, mcf->redis,
                                             dify_gcra_script);
    if (mcf->script == NULL) {
        return NGX_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_zone_t));
    if (zone == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&name, "dify_status");

    mcf->shm_zone = ngx_shared_memory_add(cf, &name, mcf->shm_size,
                                          &ngx_http_dify_status_module);
    if (mcf->shm_zone == NULL) {
        return NGX_ERROR;
    }

    mcf->shm_zone->init = ngx_http_dify_init_zone;
    mcf->shm_zone->data = zone;

    return NGX_OK;
}


/*
 * dify_status_limit rate=N r/s|r/m|r/h [burst=N] [cost=request|documents];
 * dify_status_limit off;
 */

char *
ngx_http_dify_limit_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dify_loc_conf_t *dlcf = conf;

    u_char                     *p;
    size_t                      len;
    ngx_int_t                   n;
    ngx_str_t                  *value, s;
    ngx_uint_t                  i, burst_set;
    ngx_http_dify_main_conf_t  *mcf;

    if (dlcf->limit_set != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        dlcf->limit_set = 0;
        dlcf->cost = NGX_HTTP_DIFY_COST_REQUEST;
        return NGX_CONF_OK;
    }

    burst_set = 0;
    dlcf->cost = NGX_HTTP_DIFY_COST_REQUEST;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "rate=", 5) == 0) {

            p = value[i].data + 5;
            len = value[i].len - 5;

            /* "rate=10 r/s" is written as two words */

            if (i + 1 < cf->args->nelts
                && value[i + 1].len == 3
                && ngx_strncmp(value[i + 1].data, "r/", 2) == 0)
            {
                s.len = len + 1 + 3;
                s.data = ngx_pnalloc(cf->pool, s.len);
                if (s.data == NULL) {
                    return NGX_CONF_ERROR;
                }

                ngx_sprintf(s.data, "%*s %V", len, p, &value[i + 1]);
                p = s.data;
                len = s.len;
                i++;
            }

            if (dify_gcra_parse_rate(p, len, &dlcf->limit.rate,
                                     &dlcf->limit.period)
                != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid rate \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "burst=", 6) == 0) {

            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n <= 0 || n > DIFY_GCRA_MAX_BURST) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid burst value \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            dlcf->limit.burst = n;
            burst_set = 1;

            continue;
        }

        if (ngx_strcmp(value[i].data, "cost=request") == 0) {
            dlcf->cost = NGX_HTTP_DIFY_COST_REQUEST;
            continue;
        }

        if (ngx_strcmp(value[i].data, "cost=documents") == 0) {
            dlcf->cost = NGX_HTTP_DIFY_COST_DOCUMENTS;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (dlcf->limit.rate == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"rate\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* by default a full bucket holds one period's worth of the rate */

    if (!burst_set) {
        dlcf->limit.burst = dlcf->limit.rate;
    }

    dlcf->limit_set = 1;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dify_status_module);
    mcf->limit_used = 1;

    return NGX_CONF_OK;
}
