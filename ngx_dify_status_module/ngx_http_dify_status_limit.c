
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The limiter (rows 8, 8b and 9 of the contract): the limits of a
 * location (several dify_status_limit, each on its own key), decided by
 * a script in Redis and shared by the whole fleet, with a shadow of each
 * key's state in shared memory.
 *
 * The limits whose keys are equal for a request (the default, the Bearer
 * token, for most) are one script call: decided atomically, all charged
 * when all admit the request, none otherwise.  Limits on different keys
 * are one call per key, sent at once (their keys may live in different
 * Redis Cluster slots): when one of them refuses the request, or its
 * fallback does, the calls that charged are given their units back by a
 * second call ("r"), so that a refused request costs nothing anywhere.
 *
 * The script calls of one event-loop pass are one: a group waits in the
 * worker's batch until the pass posts its flush, which sends every group
 * waiting as one EVALSHA, decided by Redis in order.  In a Cluster,
 * where a command's declared keys share one slot, the groups of the
 * slots one node serves (as the worker's map has it) are one call with
 * numkeys 0, their keys among the arguments; a group alone for its node
 * or of a slot unknown is a call of its own, keys declared; a node's
 * call that meets a key the node does not serve (its slot moved) fails
 * having written nothing, and its groups go again one by one, keys
 * declared, following MOVED and ASK.  No request
 * waits for a timer or for a batch to fill: the flush is posted by the
 * first group of a pass and runs before the worker sleeps again.
 *
 * A group whose limits were last seen in force as the location's
 * defaults, or never seen, is sent as one expected to have no override
 * ("d" rather than "c"): the call then reads their overrides only when
 * one EXISTS of them all finds one, and a key seen with an override is
 * read on every call.  The hint weighs on the cost of a call, never on
 * a verdict: every call decides under the overrides as they are then.
 *
 * The shadow serves two ends.  While Redis answers, it lets every worker
 * refuse a request that a limit certainly refuses without asking Redis,
 * for at most NGX_HTTP_DIFY_CACHE_LIFE after the command whose reply it
 * holds was made: a change of a key's override (or a reset, or a block)
 * is seen by every node within that time, and the admin tool waits it
 * out before it returns.  While Redis does not answer,
 * "dify_status_redis_fallback local" goes on enforcing each limit's last
 * known state.  Every time on the node is the monotonic clock
 * (ngx_current_msec): a step of the wall clock changes nothing.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_NODE_IDLE   60000         /* in ms, before expiry */
#define NGX_HTTP_DIFY_CACHE_LIFE  1000          /* in ms, of a verdict */

#define NGX_HTTP_DIFY_BY_REDIS    0             /* how a group decided */
#define NGX_HTTP_DIFY_BY_ALLOW    1
#define NGX_HTTP_DIFY_BY_DENY     2
#define NGX_HTTP_DIFY_BY_LOCAL    3

#define NGX_HTTP_DIFY_BATCH_MAX   64            /* groups in one call */


/*
 * What a shadow is the shadow of: the state of one limit of a key in
 * Redis (under a prefix) as one location's default of that limit sees
 * it.  Locations with other prefixes or defaults keep shadows of their
 * own.  Zeroed before it is filled, so that it compares with
 * ngx_memcmp().
 */
typedef struct {
    u_char                     key[DIFY_KEY_HASH_LEN];
    u_char                     name[DIFY_GCRA_MAX_NAME];
    uint32_t                   prefix;          /* crc32 of the prefix */
    uint32_t                   prefix_len;
    dify_gcra_limit_t          deflt;
} ngx_http_dify_node_key_t;


typedef struct {
    u_char                     color;
    u_char                     known;           /* limit seen in Redis */
    u_char                     dummy[2];
    ngx_msec_t                 last;            /* last use */
    ngx_msec_t                 sent;            /* the reply's command */
    ngx_queue_t                queue;
    int64_t                    tat;             /* in us, monotonic */
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


/* one limit for one request */
typedef struct {
    ngx_http_dify_limit_conf_t  *conf;
    u_char                       hash[DIFY_KEY_HASH_LEN];
    uint64_t                     cost;
    ngx_uint_t                   group;
    dify_gcra_result_t           res;           /* when has_res */
    unsigned                     has_res:1;
    unsigned                     plain:1;       /* no override last seen */
} ngx_http_dify_limit_item_t;


typedef struct ngx_http_dify_limit_call_s  ngx_http_dify_limit_call_t;


/* the limits of one key: one script call */
typedef struct {
    ngx_http_dify_limiter_t     *lm;
    ngx_http_dify_limit_call_t  *call;          /* pending */
    ngx_uint_t                   part;          /* of call */
    ngx_queue_t                  queue;         /* in the batch */
    ngx_msec_t                   sent;
    ngx_int_t                    node;          /* Cluster: its slot's */
    ngx_uint_t                   slot;
    ngx_uint_t                   by;            /* NGX_HTTP_DIFY_BY_* */
    ngx_uint_t                   op;            /* DIFY_GCRA_OP_* */
    ngx_uint_t                   n;
    ngx_uint_t                   item[DIFY_GCRA_MAX_LIMITS];
    unsigned                     queued:1;      /* in the batch */
    unsigned                     done:1;
    unsigned                     charged:1;     /* Redis charged it */
    unsigned                     blocked:1;
} ngx_http_dify_limit_group_t;


/* a group's place in a script call */
typedef struct {
    ngx_http_dify_limit_group_t *group;         /* NULL: its request left */
    size_t                       width;         /* of its reply */
} ngx_http_dify_limit_part_t;


/* one script call, for the groups of one or several requests */
struct ngx_http_dify_limit_call_s {
    ngx_queue_t                  queue;         /* in the batch's calls */
    ngx_http_dify_redis_req_t   *req;
    ngx_msec_t                   sent;
    ngx_msec_t                   timeout;
    ngx_uint_t                   undeclared;    /* a Cluster node's */
    ngx_uint_t                   n;
    ngx_uint_t                   left;          /* groups still waiting */
    ngx_http_dify_limit_part_t   part[1];       /* n */
};


/* the worker's: the groups of this pass, and the calls in flight */
typedef struct {
    ngx_event_t                  flush;
    ngx_queue_t                  groups;
    ngx_queue_t                  calls;
    ngx_uint_t                   ready;
} ngx_http_dify_limit_batch_t;


struct ngx_http_dify_limiter_s {
    ngx_http_dify_ctx_t         *ctx;
    ngx_http_dify_loc_conf_t    *dlcf;
    ngx_uint_t                   nitems;
    ngx_uint_t                   ngroups;
    ngx_uint_t                   pending;
    ngx_http_dify_limit_item_t   items[DIFY_GCRA_MAX_LIMITS];
    ngx_http_dify_limit_group_t  groups[DIFY_GCRA_MAX_LIMITS];
};


static ngx_int_t ngx_http_dify_limit_items(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm);
static void ngx_http_dify_limit_queue(ngx_http_dify_limit_group_t *g);
static void ngx_http_dify_limit_flush(ngx_event_t *ev);
static ngx_int_t ngx_http_dify_limit_send(ngx_http_dify_limit_group_t **gs,
    ngx_uint_t n, ngx_uint_t refund, ngx_uint_t undeclared,
    ngx_msec_t timeout);
static size_t ngx_http_dify_limit_args(ngx_http_dify_limit_group_t **gs,
    ngx_uint_t n, ngx_uint_t refund, ngx_uint_t undeclared, u_char *p,
    const char **argv, size_t *argvlen);
static void ngx_http_dify_limit_reply(redisReply *reply, void *data);
static void ngx_http_dify_limit_split(ngx_http_dify_limit_call_t *call,
    ngx_uint_t stale);
static void ngx_http_dify_limit_group_reply(ngx_http_dify_limit_group_t *g,
    redisReply **element, ngx_uint_t *logged);
static void ngx_http_dify_limit_group_done(ngx_http_dify_limit_group_t *g);
static void ngx_http_dify_limit_refunded(redisReply *reply, void *data);
static void ngx_http_dify_limit_fallback(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g);
static void ngx_http_dify_limit_decided(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    ngx_uint_t cached);
static void ngx_http_dify_limit_reject(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    ngx_http_dify_limit_item_t *it);
static void ngx_http_dify_limit_uncharge(ngx_http_dify_limit_item_t *it);
static void ngx_http_dify_limit_commit(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm);
static ngx_int_t ngx_http_dify_limit_cached(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    int64_t now);
static void ngx_http_dify_limit_shadow(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g,
    int64_t now);
static void ngx_http_dify_limit_unshadow(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g);
static uint32_t ngx_http_dify_node_key(ngx_http_dify_loc_conf_t *dlcf,
    ngx_http_dify_limit_item_t *it, ngx_http_dify_node_key_t *nk);
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


static ngx_http_dify_limit_batch_t  ngx_http_dify_batch;


ngx_int_t
ngx_http_dify_limit_start(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    int64_t                       now;
    ngx_uint_t                    i, j, batches;
    ngx_http_dify_limiter_t      *lm;
    ngx_http_dify_loc_conf_t     *dlcf;
    ngx_http_dify_main_conf_t    *mcf;
    ngx_http_dify_limit_batch_t  *b;
    ngx_http_dify_limit_group_t  *g;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);

    if (!dlcf->limit_set || dlcf->limits == NULL) {
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_PASSED;
        return NGX_OK;
    }

    lm = ngx_pcalloc(r->pool, sizeof(ngx_http_dify_limiter_t));
    if (lm == NULL) {
        ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_OK;
    }

    lm->ctx = ctx;
    lm->dlcf = dlcf;
    ctx->limiter = lm;

    if (ngx_http_dify_limit_items(r, dlcf, lm) != NGX_OK) {
        ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_OK;
    }

    if (lm->nitems == 0) {
        /* every limit's key is empty: none applies */
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_PASSED;
        return NGX_OK;
    }

    now = ngx_http_dify_now();

    if (ngx_http_dify_limit_cached(r, dlcf, lm, now) == NGX_OK) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_LIMITED_CACHED);
        ngx_http_dify_limit_decided(r, dlcf, lm, 1);
        return NGX_OK;
    }

    b = &ngx_http_dify_batch;

    if (!b->ready) {
        b->flush.handler = ngx_http_dify_limit_flush;
        b->flush.data = b;
        b->flush.log = ngx_cycle->log;
        ngx_queue_init(&b->groups);
        ngx_queue_init(&b->calls);
        b->ready = 1;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_dify_status_module);
    batches = (mcf->rs != NULL);

    for (i = 0; i < lm->ngroups; i++) {
        g = &lm->groups[i];

        g->op = DIFY_GCRA_OP_DEFAULT;

        for (j = 0; j < g->n; j++) {
            if (!lm->items[g->item[j]].plain) {
                g->op = DIFY_GCRA_OP_CHARGE;
                break;
            }
        }

        if (batches) {
            ngx_http_dify_limit_queue(g);
            lm->pending++;
            continue;
        }

        if (ngx_http_dify_limit_send(&g, 1, 0, 0, 0) == NGX_OK) {
            lm->pending++;
            continue;
        }

        ngx_http_dify_limit_fallback(r, dlcf, g);
    }

    if (lm->pending) {
        return NGX_AGAIN;
    }

    ngx_http_dify_limit_decided(r, dlcf, lm, 0);

    return NGX_OK;
}


/*
 * The limits that apply to the request, each with its key's hash and
 * its cost, grouped by key.
 */

static ngx_int_t
ngx_http_dify_limit_items(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm)
{
    ngx_str_t                     val;
    ngx_uint_t                    i, j;
    ngx_http_dify_ctx_t          *ctx;
    ngx_http_dify_limit_conf_t   *lc;
    ngx_http_dify_limit_item_t   *it;
    ngx_http_dify_limit_group_t  *g;

    ctx = lm->ctx;
    lc = dlcf->limits->elts;

    for (i = 0; i < dlcf->limits->nelts && i < DIFY_GCRA_MAX_LIMITS; i++) {
        it = &lm->items[lm->nitems];
        it->conf = &lc[i];

        if (lc[i].key_hash != NULL) {
            ngx_memcpy(it->hash, lc[i].key_hash, DIFY_KEY_HASH_LEN);

        } else if (lc[i].key == NULL) {
            ngx_memcpy(it->hash, ctx->key_hash, DIFY_KEY_HASH_LEN);

        } else {
            if (ngx_http_complex_value(r, lc[i].key, &val) != NGX_OK) {
                return NGX_ERROR;
            }

            if (val.len == 0) {
                /* an empty key: the limit does not apply, as limit_req */
                continue;
            }

            /* the key goes no further than this hash */

            if (dify_key_hash(val.data, val.len, (char *) it->hash) != 0) {
                ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                              "dify_status: hashing a limit's key failed");
                return NGX_ERROR;
            }
        }

        it->cost = 1;

        if (lc[i].cost == NGX_HTTP_DIFY_COST_DOCUMENTS
            && ctx->documents > 1)
        {
            it->cost = ctx->documents;
        }

        for (j = 0; j < lm->ngroups; j++) {
            g = &lm->groups[j];

            if (ngx_memcmp(lm->items[g->item[0]].hash, it->hash,
                           DIFY_KEY_HASH_LEN)
                == 0)
            {
                break;
            }
        }

        g = &lm->groups[j];

        if (j == lm->ngroups) {
            lm->ngroups++;
            g->lm = lm;
        }

        it->group = j;
        g->item[g->n++] = lm->nitems++;
    }

    return NGX_OK;
}


/*
 * A group joins the worker's batch; the first of a pass posts the flush,
 * which runs once this pass's events are handled.
 */

static void
ngx_http_dify_limit_queue(ngx_http_dify_limit_group_t *g)
{
    ngx_http_dify_limit_batch_t  *b;

    b = &ngx_http_dify_batch;

    ngx_queue_insert_tail(&b->groups, &g->queue);
    g->queued = 1;

    if (!b->flush.posted) {
        ngx_post_event(&b->flush, &ngx_posted_events);
    }
}


/* every group of the pass, in order: one call per NGX_HTTP_DIFY_BATCH_MAX */

static void
ngx_http_dify_limit_flush(ngx_event_t *ev)
{
    ngx_http_dify_limit_batch_t *b = ev->data;

    ngx_uint_t                    i, n, cluster;
    ngx_queue_t                  *q, *next;
    ngx_http_dify_main_conf_t    *mcf;
    ngx_http_dify_limit_group_t  *g, *h, *gs[NGX_HTTP_DIFY_BATCH_MAX];

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_dify_status_module);

    cluster = !ngx_http_dify_redis_batches(mcf->rs);

    if (cluster) {
        /* the node of each group's slot, as the worker's map has it */

        for (q = ngx_queue_head(&b->groups);
             q != ngx_queue_sentinel(&b->groups);
             q = ngx_queue_next(q))
        {
            g = ngx_queue_data(q, ngx_http_dify_limit_group_t, queue);

            g->slot = dify_cluster_keyslot(
                          (const char *) g->lm->items[g->item[0]].hash,
                          DIFY_KEY_HASH_LEN);
            g->node = ngx_http_dify_redis_node(mcf->rs, g->slot);
        }
    }

    while (!ngx_queue_empty(&b->groups)) {

        q = ngx_queue_head(&b->groups);
        ngx_queue_remove(q);

        g = ngx_queue_data(q, ngx_http_dify_limit_group_t, queue);
        g->queued = 0;
        gs[0] = g;
        n = 1;

        if (!cluster) {
            while (n < NGX_HTTP_DIFY_BATCH_MAX
                   && !ngx_queue_empty(&b->groups))
            {
                q = ngx_queue_head(&b->groups);
                ngx_queue_remove(q);

                g = ngx_queue_data(q, ngx_http_dify_limit_group_t, queue);
                g->queued = 0;
                gs[n++] = g;
            }

        } else if (g->node != NGX_ERROR) {

            /*
             * The groups of the slots the same node serves, in order (the
             * groups of one key share its slot); a slot unknown goes
             * alone, redirected as the node says.
             */

            for (q = ngx_queue_head(&b->groups);
                 q != ngx_queue_sentinel(&b->groups)
                 && n < NGX_HTTP_DIFY_BATCH_MAX;
                 q = next)
            {
                next = ngx_queue_next(q);

                h = ngx_queue_data(q, ngx_http_dify_limit_group_t, queue);

                if (h->node == g->node) {
                    ngx_queue_remove(q);
                    h->queued = 0;
                    gs[n++] = h;
                }
            }
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "dify_status limit: %ui groups in one call", n);

        if (ngx_http_dify_limit_send(gs, n, 0, cluster && n > 1, 0)
            == NGX_OK)
        {
            continue;
        }

        /* Redis cannot be asked now: each group takes its fallback */

        for (i = 0; i < n; i++) {
            g = gs[i];
            ngx_http_dify_limit_fallback(g->lm->ctx->request, g->lm->dlcf, g);
            ngx_http_dify_limit_group_done(g);
        }
    }
}


/*
 * One script call for n groups (one, with refund: "r" for the limits
 * Redis charged).  The hash tag {H} keeps a key's override and states in
 * one Redis Cluster slot, and a group's first key routes a call of one
 * group.
 */

static ngx_int_t
ngx_http_dify_limit_send(ngx_http_dify_limit_group_t **gs, ngx_uint_t n,
    ngx_uint_t refund, ngx_uint_t undeclared, ngx_msec_t timeout)
{
    u_char                       *buf;
    size_t                        size, nargs, *argvlen;
    ngx_int_t                     argc;
    ngx_uint_t                    i;
    const char                  **argv;
    ngx_http_dify_redis_req_t    *req;
    ngx_http_dify_limit_call_t   *call;
    ngx_http_dify_main_conf_t    *mcf;
    ngx_http_dify_limit_group_t  *g;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_dify_status_module);

    if (timeout == 0) {
        timeout = mcf->redis->timeout;
    }

    size = NGX_INT_T_LEN;
    nargs = 2;

    for (i = 0; i < n; i++) {
        g = gs[i];

        size += (g->n + 1) * (g->lm->dlcf->prefix.len + 2 + DIFY_KEY_HASH_LEN
                              + sizeof(":limit") + sizeof(":tat:")
                              + DIFY_GCRA_MAX_NAME)
                + g->n * 5 * NGX_INT64_LEN + 2;
        nargs += 1 + 6 * g->n;
    }

    buf = ngx_alloc(nargs * (sizeof(const char *) + sizeof(size_t)) + size,
                    ngx_cycle->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    argv = (const char **) buf;
    argvlen = (size_t *) (argv + nargs);

    argc = ngx_http_dify_limit_args(gs, n, refund, undeclared,
                                    (u_char *) (argvlen + nargs), argv,
                                    argvlen);

    call = NULL;

    if (!refund) {
        call = ngx_alloc(sizeof(ngx_http_dify_limit_call_t)
                         + (n - 1) * sizeof(ngx_http_dify_limit_part_t),
                         ngx_cycle->log);
        if (call == NULL) {
            ngx_free(buf);
            return NGX_ERROR;
        }
    }

    /* the Redis connection times the command from when it is written */

    if (undeclared) {
        /* a Cluster node's batch: to the node of the first group's slot */

        req = ngx_http_dify_redis_eval_slot(mcf->rs, gs[0]->slot,
                                            mcf->script,
                                            ngx_http_dify_limit_reply,
                                            call, timeout, argc, argv,
                                            argvlen);

    } else {
        req = ngx_http_dify_redis_eval(mcf->rs, mcf->script,
                                       refund ? ngx_http_dify_limit_refunded
                                              : ngx_http_dify_limit_reply,
                                       call, timeout, argc, argv, argvlen);
    }

    /* the command has its own copy of the arguments */

    ngx_free(buf);

    if (req == NULL) {
        if (call != NULL) {
            ngx_free(call);
        }

        return NGX_ERROR;
    }

    if (refund) {
        /* nobody waits for it: it outlives the request */
        return NGX_OK;
    }

    call->req = req;
    call->sent = ngx_current_msec;
    call->timeout = timeout;
    call->undeclared = undeclared;
    call->n = n;
    call->left = n;

    ngx_queue_insert_tail(&ngx_http_dify_batch.calls, &call->queue);

    for (i = 0; i < n; i++) {
        g = gs[i];

        call->part[i].group = g;
        call->part[i].width = dify_gcra_reply_width(g->op, g->n);

        g->call = call;
        g->part = i;
        g->sent = ngx_current_msec;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "dify_status limit: a call of %ui groups, timeout %M ms",
                   n, timeout);

    return NGX_OK;
}


/*
 * The arguments, in the order of dify_gcra.h: numkeys, the keys of every
 * group, the descriptor, the values of every group; undeclared, "0", the
 * descriptor, the keys, the values.  From p, which has room enough.
 * Returns argc.
 */

static size_t
ngx_http_dify_limit_args(ngx_http_dify_limit_group_t **gs, ngx_uint_t n,
    ngx_uint_t refund, ngx_uint_t undeclared, u_char *p, const char **argv,
    size_t *argvlen)
{
    u_char                      *base, *desc;
    size_t                       len, k, v, nkeys;
    uint64_t                     val[5];
    ngx_uint_t                   i, j, m, op, nval;
    ngx_http_dify_limit_conf_t  *lc;
    ngx_http_dify_limit_item_t  *it;
    ngx_http_dify_limit_group_t *g;

    nkeys = 0;

    for (i = 0; i < n; i++) {
        nkeys += gs[i]->n + 1;
    }

    argv[0] = (const char *) p;
    p = ngx_sprintf(p, "%uz", undeclared ? 0 : nkeys);
    argvlen[0] = p - (u_char *) argv[0];

    desc = p;
    p += 2 * n;

    if (undeclared) {
        argv[1] = (const char *) desc;
        argvlen[1] = 2 * n;
        k = 2;

    } else {
        argv[1 + nkeys] = (const char *) desc;
        argvlen[1 + nkeys] = 2 * n;
        k = 1;
    }

    v = 2 + nkeys;

    for (i = 0; i < n; i++) {
        g = gs[i];
        op = refund ? DIFY_GCRA_OP_REFUND : g->op;

        *desc++ = (u_char) op;
        *desc++ = (u_char) ('0' + g->n);

        /* "<prefix>{<hash>}", then ":limit", ":tat" or ":tat:NAME" */

        it = &g->lm->items[g->item[0]];

        base = p;
        p = ngx_cpymem(p, g->lm->dlcf->prefix.data, g->lm->dlcf->prefix.len);
        *p++ = '{';
        p = ngx_cpymem(p, it->hash, DIFY_KEY_HASH_LEN);
        *p++ = '}';
        len = p - base;

        argv[k] = (const char *) base;
        p = ngx_cpymem(p, ":limit", sizeof(":limit") - 1);
        argvlen[k++] = p - base;

        for (j = 0; j < g->n; j++) {
            it = &g->lm->items[g->item[j]];
            lc = it->conf;

            argv[k] = (const char *) p;
            p = ngx_cpymem(p, base, len);
            p = ngx_cpymem(p, ":tat", sizeof(":tat") - 1);

            if (lc->name.len != sizeof("default") - 1
                || ngx_strncmp(lc->name.data, "default", lc->name.len) != 0)
            {
                *p++ = ':';
                p = ngx_cpymem(p, lc->name.data, lc->name.len);
            }

            argvlen[k] = p - (u_char *) argv[k];
            k++;

            if (op == DIFY_GCRA_OP_REFUND) {
                val[0] = it->cost;
                val[1] = dify_gcra_interval(&it->res.limit);
                nval = 2;

            } else {
                argv[v] = (const char *) lc->name.data;
                argvlen[v++] = lc->name.len;
                val[0] = lc->limit.rate;
                val[1] = lc->limit.period;
                val[2] = lc->limit.burst;
                val[3] = it->cost;
                nval = 4;
            }

            for (m = 0; m < nval; m++) {
                argv[v] = (const char *) p;
                p = ngx_sprintf(p, "%uL", val[m]);
                argvlen[v] = p - (u_char *) argv[v];
                v++;
            }
        }
    }

    return v;
}


/*
 * Called by the command layer exactly once per call: with the reply, or
 * with NULL when none came in time.  Each group still waiting takes its
 * part; the reply's shape is the whole call's.
 */

static void
ngx_http_dify_limit_reply(redisReply *reply, void *data)
{
    ngx_http_dify_limit_call_t *call = data;

    size_t                        pos, need;
    ngx_uint_t                    i, logged;
    redisReply                  **element;
    ngx_http_dify_main_conf_t    *mcf;
    ngx_http_dify_limit_group_t  *g;

    ngx_queue_remove(&call->queue);

    if (call->undeclared) {
        mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                                  ngx_http_dify_status_module);

        if (ngx_http_dify_redis_stale(mcf->rs, reply)) {
            ngx_http_dify_limit_split(call, 1);
            return;
        }
    }

    /*
     * A key of another type than the script's (an override that is not a
     * hash) fails the call of every group it carries, having written
     * nothing: each goes again alone, so that only its own key's group
     * takes the fallback, as when each key was a call of its own.
     */

    if (call->n > 1 && reply != NULL && reply->type == REDIS_REPLY_ERROR
        && reply->str != NULL
        && ngx_strlcasestrn((u_char *) reply->str,
                            (u_char *) reply->str + ngx_min(reply->len, 256),
                            (u_char *) "WRONGTYPE", sizeof("WRONGTYPE") - 2)
           != NULL)
    {
        ngx_http_dify_limit_split(call, 0);
        return;
    }

    need = 0;

    for (i = 0; i < call->n; i++) {
        need += call->part[i].width;
    }

    logged = 0;
    element = NULL;

    if (reply == NULL) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "dify_status limit: no reply in time, "
                       "or the connection was lost");

    } else if (reply->type == REDIS_REPLY_ERROR) {
        /* a NOSCRIPT here: the script could not be loaded in time */

        /* counted and logged, once, by the command layer */
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "dify_status limit: error reply: \"%*s\"",
                       (size_t) reply->len, reply->str ? reply->str : "");

    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != need
               || (need != 0 && reply->element == NULL))
    {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "dify_status: unexpected reply from redis: \"%s\"",
                      "reply is not an array of the call's size");
        logged = 1;

    } else {
        element = reply->element;
    }

    pos = 0;

    for (i = 0; i < call->n; i++) {
        g = call->part[i].group;

        if (g != NULL) {
            g->call = NULL;
            ngx_http_dify_limit_group_reply(g, element ? element + pos : NULL,
                                            &logged);
        }

        pos += call->part[i].width;
    }

    ngx_free(call);
}


/*
 * A Cluster node's batch found a key the node does not serve (its slot
 * moved, or is being migrated, since the map was read), or a batch met a
 * key of another type: the script wrote nothing.  Each group still
 * waiting goes again alone, its keys declared, so that MOVED and ASK
 * lead it, in what is left of the time.
 */

static void
ngx_http_dify_limit_split(ngx_http_dify_limit_call_t *call, ngx_uint_t stale)
{
    ngx_uint_t                    i;
    ngx_msec_t                    left, elapsed;
    ngx_http_dify_limit_group_t  *g;

    if (stale) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_CLUSTER_SPLITS);
    }

    elapsed = ngx_current_msec - call->sent;
    left = (elapsed < call->timeout) ? call->timeout - elapsed : 0;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "dify_status limit: a call of %ui groups split, "
                   "%M ms left", call->n, left);

    for (i = 0; i < call->n; i++) {
        g = call->part[i].group;

        if (g == NULL) {
            continue;
        }

        g->call = NULL;

        if (left != 0
            && ngx_http_dify_limit_send(&g, 1, 0, 0, left) == NGX_OK)
        {
            continue;
        }

        ngx_http_dify_limit_fallback(g->lm->ctx->request, g->lm->dlcf, g);
        ngx_http_dify_limit_group_done(g);
    }

    ngx_free(call);
}


/* a group's part of a reply, or NULL: none came */

static void
ngx_http_dify_limit_group_reply(ngx_http_dify_limit_group_t *g,
    redisReply **element, ngx_uint_t *logged)
{
    ngx_uint_t                   i;
    const char                  *err;
    ngx_http_request_t          *r;
    ngx_http_dify_limiter_t     *lm;
    ngx_http_dify_limit_item_t  *it;
    dify_gcra_result_t           res[DIFY_GCRA_MAX_LIMITS];

    lm = g->lm;
    r = lm->ctx->request;

    if (element == NULL) {
        ngx_http_dify_limit_fallback(r, lm->dlcf, g);
        goto done;
    }

    err = NULL;

    if (dify_gcra_parse_group(element, g->op, g->n, res, &err)
        != DIFY_REPLY_OK)
    {
        if (!*logged) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "dify_status: unexpected reply from redis: \"%s\"",
                          err ? err : "");
            *logged = 1;
        }

        ngx_http_dify_limit_fallback(r, lm->dlcf, g);
        goto done;
    }

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_DECISIONS);

    g->by = NGX_HTTP_DIFY_BY_REDIS;
    g->done = 1;
    g->charged = dify_gcra_charged(res, g->n);
    g->blocked = (res[0].verdict == DIFY_GCRA_BLOCKED);

    for (i = 0; i < g->n; i++) {
        it = &lm->items[g->item[i]];
        it->res = res[i];
        it->has_res = !g->blocked;
    }

    ngx_http_dify_limit_shadow(r, lm->dlcf, g, ngx_http_dify_now());

done:

    ngx_http_dify_limit_group_done(g);
}


/*
 * Once every group has decided, the request is decided, and goes on
 * outside of the Redis connection: ctx->wait is posted.
 */

static void
ngx_http_dify_limit_group_done(ngx_http_dify_limit_group_t *g)
{
    ngx_http_dify_limiter_t  *lm;

    lm = g->lm;

    if (--lm->pending) {
        return;
    }

    ngx_http_dify_limit_decided(lm->ctx->request, lm->dlcf, lm, 0);

    ngx_post_event(&lm->ctx->wait, &ngx_posted_events);
}


/* the reply to a refund: nothing waits for it */

static void
ngx_http_dify_limit_refunded(redisReply *reply, void *data)
{
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 1
        || dify_gcra_parse_group(reply->element, DIFY_GCRA_OP_REFUND,
                                 DIFY_GCRA_MAX_LIMITS, NULL, NULL)
           != DIFY_REPLY_OK)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "dify_status: giving back the quota of a refused "
                      "request failed in redis");
    }
}


/*
 * Redis did not answer in time for a group, or could not be asked.  With
 * "local", each limit of the group is decided from its shadow, without
 * charging it yet (ngx_http_dify_limit_commit() does, once the request
 * passes).
 */

static void
ngx_http_dify_limit_fallback(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g)
{
    int64_t                       now, tat;
    uint32_t                      hash;
    ngx_uint_t                    i;
    dify_gcra_limit_t             limit;
    ngx_http_dify_node_t         *node;
    ngx_http_dify_zone_t         *zone;
    ngx_http_dify_node_key_t      nk;
    ngx_http_dify_limit_item_t   *it;

    g->done = 1;

    switch (dlcf->fallback) {

    case NGX_HTTP_DIFY_FALLBACK_DENY:
        g->by = NGX_HTTP_DIFY_BY_DENY;
        return;

    case NGX_HTTP_DIFY_FALLBACK_LOCAL:
        break;

    default: /* NGX_HTTP_DIFY_FALLBACK_ALLOW */
        g->by = NGX_HTTP_DIFY_BY_ALLOW;
        return;
    }

    g->by = NGX_HTTP_DIFY_BY_LOCAL;

    zone = ngx_http_dify_zone(r);
    now = ngx_http_dify_now();

    for (i = 0; i < g->n; i++) {
        it = &g->lm->items[g->item[i]];
        hash = ngx_http_dify_node_key(dlcf, it, &nk);

        tat = now;
        limit = it->conf->limit;

        ngx_shmtx_lock(&zone->shpool->mutex);

        node = ngx_http_dify_node_lookup(zone, &nk, hash);

        if (node != NULL) {
            tat = node->tat;

            if (node->known) {
                limit = node->limit;
            }
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);

        /* on a copy: charged by ngx_http_dify_limit_commit() */

        dify_gcra_decide(&tat, now, &limit, it->cost, &it->res);
        ngx_http_dify_limit_uncharge(it);
        it->has_res = 1;
    }
}


/*
 * Every group has decided (or the shadow refused the request at once):
 * the request passes when every limit admitted it.  Otherwise what Redis
 * charged is given back, and the answer is the limit's that refused:
 * the one that can never pass, or else the longest wait.
 */

static void
ngx_http_dify_limit_decided(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    ngx_uint_t cached)
{
    ngx_uint_t                    i, j, by_allow, by_local, blocked;
    ngx_uint_t                    denied;
    ngx_http_dify_ctx_t          *ctx;
    ngx_http_dify_limit_item_t   *it, *refused, *least;
    ngx_http_dify_limit_group_t  *g;

    ctx = lm->ctx;

    by_allow = 0;
    by_local = 0;
    blocked = 0;
    denied = 0;

    for (i = 0; i < lm->ngroups; i++) {
        g = &lm->groups[i];

        if (!g->done) {
            continue;
        }

        by_allow |= (g->by == NGX_HTTP_DIFY_BY_ALLOW);
        by_local |= (g->by == NGX_HTTP_DIFY_BY_LOCAL);
        denied |= (g->by == NGX_HTTP_DIFY_BY_DENY);
        blocked |= g->blocked;
    }

    refused = NULL;
    least = NULL;

    for (i = 0; i < lm->nitems; i++) {
        it = &lm->items[i];

        if (!it->has_res) {
            continue;
        }

        ctx->has_gcra = 1;

        if (it->res.verdict == DIFY_GCRA_ALLOWED) {
            if (least == NULL || it->res.remaining < least->res.remaining) {
                least = it;
            }

            continue;
        }

        if (refused == NULL
            || (refused->res.verdict == DIFY_GCRA_LIMITED
                && (it->res.verdict == DIFY_GCRA_NEVER
                    || it->res.retry > refused->res.retry)))
        {
            refused = it;
        }
    }

    if (refused != NULL) {
        ctx->gcra = refused->res;
        ctx->limit_name = refused->conf->name;

    } else if (least != NULL) {
        ctx->gcra = least->res;
    }

    if (blocked || denied || refused != NULL) {

        /* a refused request costs nothing: what Redis charged goes back */

        for (i = 0; i < lm->ngroups; i++) {
            g = &lm->groups[i];

            if (!g->charged) {
                continue;
            }

            g->charged = 0;
            (void) ngx_http_dify_limit_send(&g, 1, 1, 0, 0);

            /* the answer and the shadows show the states as given back */

            ngx_http_dify_limit_unshadow(r, dlcf, g);

            for (j = 0; j < g->n; j++) {
                ngx_http_dify_limit_uncharge(&lm->items[g->item[j]]);
            }
        }
    }

    if (blocked) {
        if (dlcf->dry_run) {
            goto dry_run;
        }

        ctx->has_gcra = 0;
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_BLOCKED;
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_FORBIDDEN, NGX_HTTP_FORBIDDEN,
                             "Insufficient permissions.", 0);
        return;
    }

    if (denied) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_DENY);
        ctx->has_gcra = 0;
        ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FB_DENIED;
        ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_UNAVAILABLE,
                             NGX_HTTP_SERVICE_UNAVAILABLE,
                             "The rate limiter is unavailable; "
                             "retry in a moment.", 0);
        return;
    }

    if (refused == NULL) {
        ngx_http_dify_limit_commit(r, dlcf, lm);

        /* the limits decided here are charged now: the least again */

        for (i = 0; i < lm->nitems; i++) {
            it = &lm->items[i];

            if (it->has_res && it->res.remaining < ctx->gcra.remaining) {
                ctx->gcra = it->res;
            }
        }

        if (by_local) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_LOCAL_PASSED);
            ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FB_PASSED;

        } else if (by_allow) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_FALLBACK_ALLOW);
            ctx->outcome = NGX_HTTP_DIFY_OUTCOME_FB_ALLOWED;

        } else {
            ctx->outcome = NGX_HTTP_DIFY_OUTCOME_PASSED;
        }

        return;
    }

    if (dlcf->dry_run) {
        goto dry_run;
    }

    by_local = (!cached && lm->groups[refused->group].by
                           == NGX_HTTP_DIFY_BY_LOCAL);

    ngx_http_dify_metrics_inc(by_local
                              ? NGX_HTTP_DIFY_M_FALLBACK_LOCAL_LIMITED
                              : NGX_HTTP_DIFY_M_LIMITED);

    ctx->outcome = by_local ? NGX_HTTP_DIFY_OUTCOME_FB_LIMITED
                            : NGX_HTTP_DIFY_OUTCOME_LIMITED;

    ngx_http_dify_limit_reject(r, dlcf, lm, refused);

    return;

dry_run:

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_DRY_RUN_LIMITED);

    ngx_log_error(dlcf->log_level, r->connection->log, 0,
                  "dify_status: dry run, key \"%*s\" would be %s",
                  (size_t) 12, ctx->key_hash,
                  blocked ? "blocked" : "limited");

    ctx->outcome = NGX_HTTP_DIFY_OUTCOME_DRY_RUN;
}


/* the answer of a request a limit refused */

static void
ngx_http_dify_limit_reject(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    ngx_http_dify_limit_item_t *it)
{
    u_char               *p, *last;
    uint64_t              seconds;
    ngx_uint_t            token, deflt;
    ngx_http_dify_ctx_t  *ctx;
    u_char                msg[DIFY_BODY_MESSAGE_LEN];

    ctx = lm->ctx;

    p = msg;
    last = msg + sizeof(msg);

    /* the default limit on the token has the messages it always had */

    token = (it->conf->key == NULL && it->conf->key_hash == NULL);
    deflt = (it->conf->name.len == sizeof("default") - 1
             && ngx_strncmp(it->conf->name.data, "default",
                            it->conf->name.len) == 0);

    if (it->res.verdict == DIFY_GCRA_NEVER) {
        p = ngx_slprintf(p, last, "This request costs %uL, more than ",
                         it->cost);

        if (token) {
            p = ngx_slprintf(p, last, "this API key may ever spend at once");

        } else {
            p = ngx_slprintf(p, last, "may ever be spent at once");
        }

        if (!deflt || !token) {
            p = ngx_slprintf(p, last, " under the limit \"%V\"",
                             &it->conf->name);
        }

        p = ngx_slprintf(p, last, " (%uL); send smaller batches.",
                         it->res.limit.burst);

    } else {
        seconds = dify_gcra_retry_seconds(&it->res);

        p = ngx_slprintf(p, last, "Rate limit ");

        if (!deflt || !token) {
            p = ngx_slprintf(p, last, "\"%V\" ", &it->conf->name);
        }

        p = ngx_slprintf(p, last, "exceeded%s; retry in %uL second%s.",
                         token ? " for this API key" : "",
                         seconds, seconds == 1 ? "" : "s");
    }

    ngx_http_dify_reject(ctx, NGX_HTTP_DIFY_TOO_MANY_REQUESTS,
                         dlcf->limit_status, (const char *) msg, p - msg);
}


/*
 * An admitted result as it was before its charge: what a request that
 * another limit refused leaves, since it is charged nowhere.
 */

static void
ngx_http_dify_limit_uncharge(ngx_http_dify_limit_item_t *it)
{
    uint64_t  t, tol, back;

    if (it->res.verdict != DIFY_GCRA_ALLOWED) {
        return;
    }

    t = dify_gcra_interval(&it->res.limit);
    tol = it->res.limit.burst * t;
    back = it->cost * t;

    it->res.reset = (it->res.reset > back) ? it->res.reset - back : 0;
    it->res.remaining = (tol - it->res.reset) / t;
}


/* the request passed: the limits decided on this node are charged */

static void
ngx_http_dify_limit_commit(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm)
{
    int64_t                       now, tat;
    uint32_t                      hash;
    ngx_uint_t                    i;
    ngx_http_dify_node_t         *node;
    ngx_http_dify_zone_t         *zone;
    ngx_http_dify_node_key_t      nk;
    ngx_http_dify_limit_item_t   *it;

    zone = NULL;
    now = 0;

    for (i = 0; i < lm->nitems; i++) {
        it = &lm->items[i];

        if (lm->groups[it->group].by != NGX_HTTP_DIFY_BY_LOCAL) {
            continue;
        }

        if (zone == NULL) {
            zone = ngx_http_dify_zone(r);
            now = ngx_http_dify_now();
        }

        hash = ngx_http_dify_node_key(dlcf, it, &nk);

        ngx_shmtx_lock(&zone->shpool->mutex);

        node = ngx_http_dify_node_lookup(zone, &nk, hash);

        if (node == NULL) {
            node = ngx_http_dify_node_create(zone, &nk, hash);
        }

        if (node == NULL) {
            /* no room even after expiry: decided from a fresh state */
            ngx_shmtx_unlock(&zone->shpool->mutex);
            tat = now;
            dify_gcra_decide(&tat, now, &it->conf->limit, it->cost,
                             &it->res);
            continue;
        }

        if (!node->known) {
            node->limit = it->conf->limit;
        }

        node->last = ngx_current_msec;
        dify_gcra_decide(&node->tat, now, &node->limit, it->cost, &it->res);

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }
}


/*
 * NGX_OK when the shadow says a limit certainly refuses the request (a
 * verdict less than NGX_HTTP_DIFY_CACHE_LIFE old): the items it knows
 * then hold the answer.  Each item also learns whether its limit was
 * last seen in force as the location's default (or never seen).
 */

static ngx_int_t
ngx_http_dify_limit_cached(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limiter_t *lm,
    int64_t now)
{
    int64_t                      tat[DIFY_GCRA_MAX_LIMITS];
    uint32_t                     hash;
    ngx_int_t                    rc;
    ngx_uint_t                   i, fresh[DIFY_GCRA_MAX_LIMITS];
    ngx_uint_t                   known[DIFY_GCRA_MAX_LIMITS];
    ngx_http_dify_node_t        *node;
    ngx_http_dify_zone_t        *zone;
    ngx_http_dify_node_key_t     nk;
    ngx_http_dify_limit_item_t  *it;
    dify_gcra_limit_t            deflt, limit[DIFY_GCRA_MAX_LIMITS];

    zone = ngx_http_dify_zone(r);

    for (i = 0; i < lm->nitems; i++) {
        it = &lm->items[i];
        hash = ngx_http_dify_node_key(dlcf, it, &nk);

        known[i] = 0;
        fresh[i] = 0;

        ngx_shmtx_lock(&zone->shpool->mutex);

        node = ngx_http_dify_node_lookup(zone, &nk, hash);

        if (node != NULL && node->known) {
            known[i] = 1;
            fresh[i] = (ngx_msec_int_t) (ngx_current_msec - node->sent)
                       < NGX_HTTP_DIFY_CACHE_LIFE;
            tat[i] = node->tat;
            limit[i] = node->limit;
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);

        it->plain = 1;

        if (known[i]) {
            dify_gcra_normalize(&it->conf->limit, &deflt);
            it->plain = (ngx_memcmp(&deflt, &limit[i], sizeof(deflt)) == 0);
        }
    }

    rc = NGX_DECLINED;

    for (i = 0; i < lm->nitems; i++) {
        if (!known[i]) {
            continue;
        }

        it = &lm->items[i];

        dify_gcra_decide(&tat[i], now, &limit[i], it->cost, &it->res);
        ngx_http_dify_limit_uncharge(it);

        if (fresh[i] && it->res.verdict != DIFY_GCRA_ALLOWED) {
            rc = NGX_OK;
        }
    }

    if (rc != NGX_OK) {
        return NGX_DECLINED;
    }

    /* the answer lists the limits this node knows */

    for (i = 0; i < lm->nitems; i++) {
        lm->items[i].has_res = known[i];
    }

    return NGX_OK;
}


/* after a reply: the shadows take Redis's states and the key's limits */

static void
ngx_http_dify_limit_shadow(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g,
    int64_t now)
{
    uint32_t                     hash;
    ngx_uint_t                   i;
    ngx_http_dify_node_t        *node;
    ngx_http_dify_zone_t        *zone;
    ngx_http_dify_node_key_t     nk;
    ngx_http_dify_limit_item_t  *it;

    if (g->blocked) {
        return;
    }

    zone = ngx_http_dify_zone(r);

    for (i = 0; i < g->n; i++) {
        it = &g->lm->items[g->item[i]];
        hash = ngx_http_dify_node_key(dlcf, it, &nk);

        ngx_shmtx_lock(&zone->shpool->mutex);

        node = ngx_http_dify_node_lookup(zone, &nk, hash);

        if (node == NULL) {
            node = ngx_http_dify_node_create(zone, &nk, hash);
        }

        if (node != NULL) {
            node->known = 1;
            node->limit = it->res.limit;
            node->tat = now + (int64_t) it->res.reset;
            node->last = ngx_current_msec;
            node->sent = g->sent;
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }
}


/*
 * A charge given back in Redis is given back in the shadows too: the
 * shadow took the charged state from the reply (or a later reply of the
 * same key, which Redis ran before the refund and so holds the charge as
 * well), and would otherwise refuse, for up to a second, the units this
 * node has just returned.
 */

static void
ngx_http_dify_limit_unshadow(ngx_http_request_t *r,
    ngx_http_dify_loc_conf_t *dlcf, ngx_http_dify_limit_group_t *g)
{
    uint32_t                     hash;
    ngx_uint_t                   i;
    ngx_http_dify_node_t        *node;
    ngx_http_dify_zone_t        *zone;
    ngx_http_dify_node_key_t     nk;
    ngx_http_dify_limit_item_t  *it;

    zone = ngx_http_dify_zone(r);

    for (i = 0; i < g->n; i++) {
        it = &g->lm->items[g->item[i]];

        if (it->res.verdict != DIFY_GCRA_ALLOWED) {
            continue;
        }

        hash = ngx_http_dify_node_key(dlcf, it, &nk);

        ngx_shmtx_lock(&zone->shpool->mutex);

        node = ngx_http_dify_node_lookup(zone, &nk, hash);

        if (node != NULL && node->known) {
            node->tat -= (int64_t) (it->cost
                                    * dify_gcra_interval(&it->res.limit));
        }

        ngx_shmtx_unlock(&zone->shpool->mutex);
    }
}


void
ngx_http_dify_limit_release(ngx_http_dify_ctx_t *ctx)
{
    ngx_uint_t                    i;
    ngx_http_dify_limiter_t      *lm;
    ngx_http_dify_limit_call_t   *call;
    ngx_http_dify_limit_group_t  *g;

    lm = ctx->limiter;

    if (lm == NULL) {
        return;
    }

    for (i = 0; i < lm->ngroups; i++) {
        g = &lm->groups[i];

        if (g->queued) {
            ngx_queue_remove(&g->queue);
            g->queued = 0;
        }

        call = g->call;

        if (call == NULL) {
            continue;
        }

        /* the call goes on for the other groups it carries */

        call->part[g->part].group = NULL;
        g->call = NULL;

        if (--call->left == 0) {
            ngx_http_dify_redis_cancel(call->req);
            ngx_queue_remove(&call->queue);
            ngx_free(call);
        }
    }

    lm->pending = 0;
}


/* the calls in flight are nobody's once the worker exits */

void
ngx_http_dify_limit_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t                  *q;
    ngx_http_dify_limit_call_t   *call;
    ngx_http_dify_limit_batch_t  *b;

    b = &ngx_http_dify_batch;

    if (!b->ready) {
        return;
    }

    if (b->flush.posted) {
        ngx_delete_posted_event(&b->flush);
    }

    while (!ngx_queue_empty(&b->calls)) {
        q = ngx_queue_head(&b->calls);
        ngx_queue_remove(q);

        call = ngx_queue_data(q, ngx_http_dify_limit_call_t, queue);
        ngx_free(call);
    }

    b->ready = 0;
}


/*
 * RateLimit-Policy and RateLimit: a List member per limit that applied,
 * in the order of the configuration.
 */

ngx_int_t
ngx_http_dify_limit_headers(ngx_http_request_t *r, ngx_http_dify_ctx_t *ctx)
{
    u_char                      *policy, *rl, *p, *q;
    size_t                       len;
    ngx_uint_t                   i, n;
    ngx_http_dify_limiter_t     *lm;
    ngx_http_dify_loc_conf_t    *dlcf;
    ngx_http_dify_limit_item_t  *it;

    dlcf = ngx_http_get_module_loc_conf(r, ngx_http_dify_status_module);
    lm = ctx->limiter;

    if (!dlcf->limit_headers || lm == NULL) {
        return NGX_OK;
    }

    /* ", " "name" ";q=" N ";w=" N, and ";r=" N ";t=" N: the longest */

    len = DIFY_GCRA_MAX_LIMITS
          * (2 + DIFY_GCRA_MAX_NAME + 2 + 6 + 2 * NGX_INT64_LEN) + 1;

    policy = ngx_pnalloc(r->pool, 2 * len);
    if (policy == NULL) {
        return NGX_ERROR;
    }

    rl = policy + len;
    p = policy;
    q = rl;
    n = 0;

    for (i = 0; i < lm->nitems; i++) {
        it = &lm->items[i];

        if (!it->has_res) {
            continue;
        }

        if (n++) {
            *p++ = ','; *p++ = ' ';
            *q++ = ','; *q++ = ' ';
        }

        p += dify_gcra_policy_item((char *) p, policy + len - p,
                                   (char *) it->conf->name.data,
                                   it->conf->name.len, &it->res.limit);

        q += dify_gcra_ratelimit_item((char *) q, rl + len - q,
                                      (char *) it->conf->name.data,
                                      it->conf->name.len, &it->res);
    }

    if (n == 0) {
        return NGX_OK;
    }

    if (ngx_http_dify_limit_header(r, "RateLimit-Policy", policy, p - policy)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_dify_limit_header(r, "RateLimit", rl, q - rl);
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
        /* the wait of the limit that refused, the longest of them */
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
 * with the prefix's CRC, the limit's name and its default; ngx_memcmp()
 * of the whole node key settles collisions.
 */

static uint32_t
ngx_http_dify_node_key(ngx_http_dify_loc_conf_t *dlcf,
    ngx_http_dify_limit_item_t *it, ngx_http_dify_node_key_t *nk)
{
    ngx_int_t                    bits;
    dify_gcra_limit_t           *limit;
    ngx_http_dify_limit_conf_t  *lc;

    lc = it->conf;
    limit = &lc->limit;

    ngx_memzero(nk, sizeof(ngx_http_dify_node_key_t));

    ngx_memcpy(nk->key, it->hash, DIFY_KEY_HASH_LEN);
    ngx_memcpy(nk->name, lc->name.data,
               ngx_min(lc->name.len, DIFY_GCRA_MAX_NAME));
    nk->prefix = dlcf->prefix_crc;
    nk->prefix_len = dlcf->prefix.len;
    nk->deflt = *limit;

    bits = ngx_hextoi(it->hash, 8);

    return (uint32_t) bits ^ dlcf->prefix_crc
           ^ ngx_crc32_short(lc->name.data, lc->name.len)
           ^ (uint32_t) (limit->rate * 2654435761u)
           ^ (uint32_t) (limit->period << 24)
           ^ (uint32_t) (limit->burst * 40503u);
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
    dn->sent = ngx_current_msec - NGX_HTTP_DIFY_CACHE_LIFE;
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


/*
 * The node's clock, in microseconds: the monotonic clock nginx caches
 * (ngx_current_msec, CLOCK_MONOTONIC, ms resolution), the same in every
 * worker; a step of the wall clock does not move it.
 */

static int64_t
ngx_http_dify_now(void)
{
    return (int64_t) ngx_current_msec * 1000;
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

    /* not "dify_status": its states were on the wall clock */
    ngx_str_set(&name, "dify_status_limit");

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
 * dify_status_limit [name=NAME] rate=N r/s|r/m|r/h|r/d [burst=N]
 *     [cost=request|documents] [key=VALUE];
 * dify_status_limit off;
 *
 * Several per context, each with a name of its own.
 */

char *
ngx_http_dify_limit_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dify_loc_conf_t *dlcf = conf;

    u_char                             *p;
    size_t                              len;
    uint64_t                            t;
    ngx_int_t                           n;
    ngx_str_t                          *value, s, key;
    ngx_uint_t                          i, burst_set;
    ngx_http_dify_main_conf_t          *mcf;
    ngx_http_dify_limit_conf_t         *lc, *other;
    ngx_http_compile_complex_value_t    ccv;

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        if (dlcf->limit_set != NGX_CONF_UNSET) {
            return "is duplicate";
        }

        dlcf->limit_set = 0;
        return NGX_CONF_OK;
    }

    if (dlcf->limit_set == 0) {
        return "is duplicate";
    }

    if (dlcf->limits == NULL) {
        dlcf->limits = ngx_array_create(cf->pool, 2,
                                        sizeof(ngx_http_dify_limit_conf_t));
        if (dlcf->limits == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (dlcf->limits->nelts == DIFY_GCRA_MAX_LIMITS) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "more than %d \"%V\" in one context",
                           DIFY_GCRA_MAX_LIMITS, &cmd->name);
        return NGX_CONF_ERROR;
    }

    lc = ngx_array_push(dlcf->limits);
    if (lc == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(lc, sizeof(ngx_http_dify_limit_conf_t));

    ngx_str_set(&lc->name, "default");
    lc->cost = NGX_HTTP_DIFY_COST_REQUEST;

    burst_set = 0;
    key.len = 0;
    key.data = NULL;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "name=", 5) == 0) {

            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            if (dify_gcra_valid_name(s.data, s.len) != 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid limit name \"%V\": 1 to %d "
                                   "letters, digits, \"_\" or \"-\"",
                                   &value[i], DIFY_GCRA_MAX_NAME);
                return NGX_CONF_ERROR;
            }

            lc->name = s;
            continue;
        }

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

            if (dify_gcra_parse_rate(p, len, &lc->limit.rate,
                                     &lc->limit.period)
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

            lc->limit.burst = n;
            burst_set = 1;

            continue;
        }

        if (ngx_strcmp(value[i].data, "cost=request") == 0) {
            lc->cost = NGX_HTTP_DIFY_COST_REQUEST;
            continue;
        }

        if (ngx_strcmp(value[i].data, "cost=documents") == 0) {
            lc->cost = NGX_HTTP_DIFY_COST_DOCUMENTS;
            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {

            key.data = value[i].data + 4;
            key.len = value[i].len - 4;

            if (key.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty key in \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (lc->limit.rate == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"rate\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* by default a full bucket holds one period's worth of the rate */

    if (!burst_set) {
        lc->limit.burst = lc->limit.rate;
    }

    t = dify_gcra_interval(&lc->limit);

    if (lc->limit.burst > DIFY_GCRA_MAX_TOL / t) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "burst %uL at this rate takes longer than "
                           "3600000000 seconds to fill; at most %uL",
                           lc->limit.burst, DIFY_GCRA_MAX_TOL / t);
        return NGX_CONF_ERROR;
    }

    other = dlcf->limits->elts;

    for (i = 0; i + 1 < dlcf->limits->nelts; i++) {
        if (other[i].name.len == lc->name.len
            && ngx_strncmp(other[i].name.data, lc->name.data, lc->name.len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate limit name \"%V\"", &lc->name);
            return NGX_CONF_ERROR;
        }
    }

    if (key.len) {
        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &key;
        ccv.complex_value = ngx_palloc(cf->pool,
                                       sizeof(ngx_http_complex_value_t));
        if (ccv.complex_value == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        if (ccv.complex_value->lengths == NULL) {
            /* a constant, "all" say: one key for every request */

            lc->key_hash = ngx_pnalloc(cf->pool, DIFY_KEY_HASH_LEN);
            if (lc->key_hash == NULL) {
                return NGX_CONF_ERROR;
            }

            if (dify_key_hash(key.data, key.len, (char *) lc->key_hash)
                != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "hashing the key \"%V\" failed", &key);
                return NGX_CONF_ERROR;
            }

        } else {
            lc->key = ccv.complex_value;
        }
    }

    dlcf->limit_set = 1;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dify_status_module);
    mcf->limit_used = 1;

    return NGX_CONF_OK;
}
