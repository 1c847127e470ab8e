
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Counters in shared memory, summed over all workers, and the
 * "dify_status_metrics" location that serves them in the Prometheus
 * text exposition format, version 0.0.4.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_METRICS_STATUS_MIN  400
#define NGX_HTTP_DIFY_METRICS_NSTATUS     200       /* 400 .. 599 */
#define NGX_HTTP_DIFY_METRICS_NBOUNDS     11
#define NGX_HTTP_DIFY_METRICS_NBUCKETS    (NGX_HTTP_DIFY_METRICS_NBOUNDS + 1)

/*
 * the Redis nodes counted apart, by address, the first ones seen: the
 * primaries named by the Sentinels, or the nodes of a Cluster
 */
#define NGX_HTTP_DIFY_METRICS_NODES       64
#define NGX_HTTP_DIFY_METRICS_NODE_LEN    128

/* the counters with no labels: those before the fallback ones */
#define NGX_HTTP_DIFY_METRICS_NPLAIN      NGX_HTTP_DIFY_M_FALLBACK_ALLOW
#define NGX_HTTP_DIFY_METRICS_NFALLBACK                                       \
    (NGX_HTTP_DIFY_M_NCOUNTERS - NGX_HTTP_DIFY_METRICS_NPLAIN)


/* a Redis node (its address as the transport names it) */
typedef struct {
    ngx_atomic_t               commands;
    ngx_atomic_t               up;                  /* a gauge */
    size_t                     len;
    u_char                     name[NGX_HTTP_DIFY_METRICS_NODE_LEN];
} ngx_http_dify_metrics_node_t;


/*
 * The zone's content.  Every field only ever grows, by atomic
 * additions; a reader sees each value whole, not all of them at one
 * instant.  ngx_atomic_t has the width of a pointer: on 32-bit
 * platforms rtt_sum wraps after 4295 seconds of round trips, which
 * Prometheus takes for a counter reset.
 */
typedef struct {
    ngx_atomic_t               counters[NGX_HTTP_DIFY_M_NCOUNTERS];
    ngx_atomic_t               rejected[NGX_HTTP_DIFY_NCODES]
                                       [NGX_HTTP_DIFY_METRICS_NSTATUS];
    ngx_atomic_t               rtt[NGX_HTTP_DIFY_METRICS_NBUCKETS];
    ngx_atomic_t               rtt_sum;             /* in microseconds */
    ngx_atomic_t               errors[DIFY_REDIS_ERR_N];
    ngx_atomic_t               redis_up;            /* a gauge */

    /* entries below nnodes are written once, under the zone's mutex */
    ngx_atomic_t               nnodes;
    ngx_http_dify_metrics_node_t  nodes[NGX_HTTP_DIFY_METRICS_NODES];
} ngx_http_dify_metrics_sh_t;


/* a copy of the zone, so that the size computed is the size written */
typedef struct {
    ngx_atomic_uint_t          counters[NGX_HTTP_DIFY_M_NCOUNTERS];
    ngx_atomic_uint_t          rejected[NGX_HTTP_DIFY_NCODES]
                                       [NGX_HTTP_DIFY_METRICS_NSTATUS];
    ngx_atomic_uint_t          rtt[NGX_HTTP_DIFY_METRICS_NBUCKETS];
    ngx_atomic_uint_t          rtt_sum;             /* in microseconds */
    ngx_atomic_uint_t          errors[DIFY_REDIS_ERR_N];
    ngx_atomic_int_t           redis_up;
    ngx_str_t                  node;                /* its label */
    ngx_uint_t                 nnodes;
    ngx_str_t                  node_names[NGX_HTTP_DIFY_METRICS_NODES];
    ngx_atomic_uint_t          node_commands[NGX_HTTP_DIFY_METRICS_NODES];
    ngx_atomic_int_t           node_up[NGX_HTTP_DIFY_METRICS_NODES];
} ngx_http_dify_metrics_snap_t;


typedef struct {
    ngx_str_t                  name;
    ngx_str_t                  help;
} ngx_http_dify_metrics_family_t;


typedef struct {
    ngx_str_t                  mode;
    ngx_str_t                  result;
} ngx_http_dify_metrics_fallback_t;


static ngx_int_t ngx_http_dify_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_http_dify_metrics_sh_t *ngx_http_dify_metrics_shared(void);
static ngx_int_t ngx_http_dify_metrics_handler(ngx_http_request_t *r);
static void ngx_http_dify_metrics_snapshot(ngx_http_dify_metrics_sh_t *sh,
    ngx_http_dify_metrics_snap_t *snap);
static size_t ngx_http_dify_metrics_size(ngx_http_dify_metrics_snap_t *snap);
static u_char *ngx_http_dify_metrics_write(u_char *p,
    ngx_http_dify_metrics_snap_t *snap);
static size_t ngx_http_dify_metrics_len(ngx_atomic_uint_t n);
static size_t ngx_http_dify_metrics_label_len(ngx_str_t *v);
static u_char *ngx_http_dify_metrics_label(u_char *p, ngx_str_t *v);
static size_t ngx_http_dify_metrics_header_size(
    ngx_http_dify_metrics_family_t *f, const char *type);
static u_char *ngx_http_dify_metrics_header(u_char *p,
    ngx_http_dify_metrics_family_t *f, const char *type);


static ngx_str_t  ngx_http_dify_metrics_zone_name =
    ngx_string("dify_status_metrics");


/* indexed by ngx_http_dify_metric_e, up to NGX_HTTP_DIFY_METRICS_NPLAIN */
static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_plain[] = {

    { ngx_string("dify_status_requests_checked_total"),
      ngx_string("Requests of the batch-status route checked.") },

    { ngx_string("dify_status_requests_passed_total"),
      ngx_string("Checked requests passed to the upstream.") },

    { ngx_string("dify_status_requests_limited_total"),
      ngx_string("Requests refused by the rate limit, cached verdicts "
                 "included.") },

    { ngx_string("dify_status_requests_limited_cached_total"),
      ngx_string("Requests refused by the rate limit without asking "
                 "Redis.") },

    { ngx_string("dify_status_requests_dry_run_limited_total"),
      ngx_string("Requests over the rate limit, or blocked, passed in "
                 "dry-run mode.") },

    { ngx_string("dify_status_redis_commands_total"),
      ngx_string("Commands sent to Redis.") },

    { ngx_string("dify_status_redis_errors_total"),
      ngx_string("Redis commands answered with an error (NOSCRIPT "
                 "aside) or a malformed reply, or lost with the "
                 "connection.") },

    { ngx_string("dify_status_redis_timeouts_total"),
      ngx_string("Redis commands whose reply did not come in time.") },

    { ngx_string("dify_status_redis_reconnects_total"),
      ngx_string("Attempts to connect to Redis again.") },

    { ngx_string("dify_status_redis_noscript_total"),
      ngx_string("NOSCRIPT replies; the first of a connection sends "
                 "the limiter's script in full.") },

    { ngx_string("dify_status_redis_resolve_failures_total"),
      ngx_string("Lookups of the Redis host name that failed.") },

    { ngx_string("dify_status_redis_tls_failures_total"),
      ngx_string("TLS handshakes with Redis that failed, or whose "
                 "certificate was refused.") },

    { ngx_string("dify_status_redis_moved_total"),
      ngx_string("MOVED redirections from a Redis Cluster node; each "
                 "resends the command to the node named.") },

    { ngx_string("dify_status_redis_ask_total"),
      ngx_string("ASK redirections from a Redis Cluster node (a slot "
                 "being migrated); each sends ASKING and the command to "
                 "the node named.") },

    { ngx_string("dify_status_redis_topology_refreshes_total"),
      ngx_string("Lookups of the topology: rounds of questions to the "
                 "Sentinels for the primary, or Redis Cluster slot maps "
                 "read (CLUSTER SLOTS) and applied.") },

    { ngx_string("dify_status_redis_failovers_total"),
      ngx_string("Primaries replaced: +switch-master events naming a new "
                 "primary, or a Redis Cluster slot served by a node that "
                 "was not a primary (a promoted replica), as each "
                 "worker's slot map shows it.") },

    { ngx_string("dify_status_redis_decisions_total"),
      ngx_string("Decisions of the limits of one key for one request "
                 "taken by the script in Redis; one script call decides "
                 "those of a whole event-loop pass of a worker.") },

    { ngx_string("dify_status_redis_cluster_splits_total"),
      ngx_string("Script calls of a Redis Cluster node's batch (keys "
                 "not declared) that found a key the node does not "
                 "serve; their groups are sent again, each with its "
                 "keys declared, and the slot map read again.") }
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_rejected_f = {
    ngx_string("dify_status_requests_rejected_total"),
    ngx_string("Error responses sent by the module, by status and code.")
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_fallback_f = {
    ngx_string("dify_status_fallback_decisions_total"),
    ngx_string("Decisions taken without Redis, by fallback mode and "
               "result.")
};


/* indexed by ngx_http_dify_metric_e - NGX_HTTP_DIFY_METRICS_NPLAIN */
static ngx_http_dify_metrics_fallback_t  ngx_http_dify_metrics_fallback[] = {
    { ngx_string("allow"), ngx_string("passed") },
    { ngx_string("deny"), ngx_string("denied") },
    { ngx_string("local"), ngx_string("passed") },
    { ngx_string("local"), ngx_string("limited") }
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_errors_f = {
    ngx_string("dify_status_redis_error_replies_total"),
    ngx_string("Error replies handed to the limiter, by class (NOSCRIPT "
               "recovered aside).")
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_up_f = {
    ngx_string("dify_status_redis_connections_up"),
    ngx_string("Connections to Redis established and answering, summed "
               "over the workers, by node (address as configured).")
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_node_f = {
    ngx_string("dify_status_redis_node_commands_total"),
    ngx_string("Commands sent to Redis, by node (its address; under "
               "Sentinel, each primary named; in a Cluster, host:port as "
               "the cluster reports it, or as configured).")
};


static ngx_http_dify_metrics_family_t  ngx_http_dify_metrics_rtt_f = {
    ngx_string("dify_status_redis_rtt_seconds"),
    ngx_string("Time from sending a Redis command to its reply.")
};


/* upper bounds of the buckets, in microseconds; the last bucket is +Inf */
static ngx_msec_int_t  ngx_http_dify_metrics_bounds[] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000
};


/* the same bounds in seconds, as the "le" labels */
static ngx_str_t  ngx_http_dify_metrics_le[] = {
    ngx_string("0.0001"),
    ngx_string("0.00025"),
    ngx_string("0.0005"),
    ngx_string("0.001"),
    ngx_string("0.0025"),
    ngx_string("0.005"),
    ngx_string("0.01"),
    ngx_string("0.025"),
    ngx_string("0.05"),
    ngx_string("0.1"),
    ngx_string("0.25"),
    ngx_string("+Inf")
};


void
ngx_http_dify_metrics_inc(ngx_uint_t metric)
{
    ngx_http_dify_metrics_sh_t  *sh;

    if (metric >= NGX_HTTP_DIFY_M_NCOUNTERS) {
        return;
    }

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&sh->counters[metric], 1);
}


void
ngx_http_dify_metrics_rejected(ngx_uint_t code, ngx_uint_t status)
{
    ngx_uint_t                   i;
    ngx_http_dify_metrics_sh_t  *sh;

    if (code >= NGX_HTTP_DIFY_NCODES
        || status < NGX_HTTP_DIFY_METRICS_STATUS_MIN
        || status >= NGX_HTTP_DIFY_METRICS_STATUS_MIN
                     + NGX_HTTP_DIFY_METRICS_NSTATUS)
    {
        return;
    }

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    i = status - NGX_HTTP_DIFY_METRICS_STATUS_MIN;

    (void) ngx_atomic_fetch_add(&sh->rejected[code][i], 1);
}


void
ngx_http_dify_metrics_redis_error(ngx_uint_t cls)
{
    ngx_http_dify_metrics_sh_t  *sh;

    if (cls >= DIFY_REDIS_ERR_N) {
        return;
    }

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&sh->errors[cls], 1);
}


void
ngx_http_dify_metrics_redis_up(ngx_int_t delta)
{
    ngx_http_dify_metrics_sh_t  *sh;

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&sh->redis_up, (ngx_atomic_int_t) delta);
}


/*
 * The index of a node's counters, made on first use (once per new
 * connection object, not per command); -1 when the table is full or
 * there is no zone.
 */

ngx_int_t
ngx_http_dify_metrics_node(ngx_str_t *name)
{
    size_t                         len;
    ngx_int_t                      node;
    ngx_uint_t                     i, n;
    ngx_slab_pool_t               *shpool;
    ngx_http_dify_main_conf_t     *mcf;
    ngx_http_dify_metrics_sh_t    *sh;
    ngx_http_dify_metrics_node_t  *e;

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return -1;
    }

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_dify_status_module);

    shpool = (ngx_slab_pool_t *) mcf->metrics_zone->shm.addr;

    len = ngx_min(name->len, NGX_HTTP_DIFY_METRICS_NODE_LEN);
    node = -1;

    ngx_shmtx_lock(&shpool->mutex);

    n = sh->nnodes;

    for (i = 0; i < n; i++) {
        e = &sh->nodes[i];

        if (e->len == len && ngx_memcmp(e->name, name->data, len) == 0) {
            node = i;
            break;
        }
    }

    if (node == -1 && n < NGX_HTTP_DIFY_METRICS_NODES) {
        e = &sh->nodes[n];

        ngx_memcpy(e->name, name->data, len);
        e->len = len;

        /* the entry is whole before it is counted */
        ngx_memory_barrier();

        sh->nnodes = n + 1;
        node = n;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return node;
}


void
ngx_http_dify_metrics_node_inc(ngx_int_t node, ngx_int_t commands,
    ngx_int_t up)
{
    ngx_http_dify_metrics_sh_t  *sh;

    if (node < 0 || node >= NGX_HTTP_DIFY_METRICS_NODES) {
        return;
    }

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    if (commands) {
        (void) ngx_atomic_fetch_add(&sh->nodes[node].commands,
                                    (ngx_atomic_int_t) commands);
    }

    if (up) {
        (void) ngx_atomic_fetch_add(&sh->nodes[node].up,
                                    (ngx_atomic_int_t) up);
    }
}


void
ngx_http_dify_metrics_rtt(ngx_msec_int_t usec)
{
    ngx_uint_t                   i;
    ngx_http_dify_metrics_sh_t  *sh;

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        return;
    }

    if (usec < 0) {
        usec = 0;
    }

    /* "le": a time equal to a bound counts in that bucket */

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NBOUNDS; i++) {
        if (usec <= ngx_http_dify_metrics_bounds[i]) {
            break;
        }
    }

    /* i == NGX_HTTP_DIFY_METRICS_NBOUNDS: the +Inf bucket */

    (void) ngx_atomic_fetch_add(&sh->rtt[i], 1);
    (void) ngx_atomic_fetch_add(&sh->rtt_sum, (ngx_atomic_int_t) usec);
}


static ngx_int_t
ngx_http_dify_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_dify_metrics_sh_t  *osh = data;

    ngx_slab_pool_t             *shpool;
    ngx_http_dify_metrics_sh_t  *sh;

    if (osh != NULL) {
        /*
         * a reload: nginx has handed over the old cycle's zone (same
         * name, tag and size), so the counters carry on
         */
        shm_zone->data = osh;

        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;

        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_dify_metrics_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


/*
 * The zone of the cycle this process runs, or NULL when there is none
 * (no http block, nginx -t, or while the configuration is read).
 *
 * No pointer of our own is kept: the zone is found through ngx_cycle,
 * at the cost of a few loads.  The zone's init runs in the master for
 * each cycle, before that cycle's workers are forked, so a worker
 * always finds its cycle's zone initialized; a worker of the previous
 * cycle, still finishing its requests after a reload, counts in the
 * previous cycle's zone, which is the same memory since nginx reuses
 * it.  A static pointer set by the init function would mostly work as
 * well, but it would be state that no cycle owns, set in the master by
 * a cycle that may still fail and be freed.
 */

static ngx_http_dify_metrics_sh_t *
ngx_http_dify_metrics_shared(void)
{
    ngx_http_dify_main_conf_t  *mcf;

    if (ngx_cycle->conf_ctx == NULL) {
        return NULL;
    }

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_dify_status_module);

    if (mcf == NULL || mcf->metrics_zone == NULL) {
        return NULL;
    }

    return mcf->metrics_zone->data;
}


static ngx_int_t
ngx_http_dify_metrics_handler(ngx_http_request_t *r)
{
    size_t                         size;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_chain_t                    out;
    ngx_http_dify_metrics_sh_t    *sh;
    ngx_http_dify_metrics_snap_t  *snap;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    sh = ngx_http_dify_metrics_shared();
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "dify_status_metrics zone is not initialized");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    snap = ngx_palloc(r->pool, sizeof(ngx_http_dify_metrics_snap_t));
    if (snap == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_dify_metrics_snapshot(sh, snap);

    size = ngx_http_dify_metrics_size(snap);

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_http_dify_metrics_write(b->last, snap);

    if ((size_t) (b->last - b->pos) != size) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "dify_status_metrics wrote %uz bytes instead of %uz",
                      (size_t) (b->last - b->pos), size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_dify_metrics_snapshot(ngx_http_dify_metrics_sh_t *sh,
    ngx_http_dify_metrics_snap_t *snap)
{
    ngx_uint_t                  i, j;
    ngx_http_dify_main_conf_t  *mcf;

    for (i = 0; i < NGX_HTTP_DIFY_M_NCOUNTERS; i++) {
        snap->counters[i] = sh->counters[i];
    }

    for (i = 0; i < NGX_HTTP_DIFY_NCODES; i++) {
        for (j = 0; j < NGX_HTTP_DIFY_METRICS_NSTATUS; j++) {
            snap->rejected[i][j] = sh->rejected[i][j];
        }
    }

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NBUCKETS; i++) {
        snap->rtt[i] = sh->rtt[i];
    }

    snap->rtt_sum = sh->rtt_sum;

    for (i = 0; i < DIFY_REDIS_ERR_N; i++) {
        snap->errors[i] = sh->errors[i];
    }

    snap->redis_up = (ngx_atomic_int_t) sh->redis_up;

    if (snap->redis_up < 0) {
        snap->redis_up = 0;
    }

    ngx_str_null(&snap->node);

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_dify_status_module);

    if (mcf != NULL && mcf->redis != NULL) {
        snap->node = mcf->redis->address;
    }

    snap->nnodes = ngx_min(sh->nnodes, NGX_HTTP_DIFY_METRICS_NODES);

    ngx_memory_barrier();

    for (i = 0; i < snap->nnodes; i++) {
        snap->node_names[i].data = sh->nodes[i].name;
        snap->node_names[i].len = ngx_min(sh->nodes[i].len,
                                          NGX_HTTP_DIFY_METRICS_NODE_LEN);
        snap->node_commands[i] = sh->nodes[i].commands;
        snap->node_up[i] = (ngx_atomic_int_t) sh->nodes[i].up;

        if (snap->node_up[i] < 0) {
            snap->node_up[i] = 0;
        }
    }
}


/*
 * The exact size of what ngx_http_dify_metrics_write() writes from the
 * same snapshot; the two go line by line together.
 */

static size_t
ngx_http_dify_metrics_size(ngx_http_dify_metrics_snap_t *snap)
{
    size_t                             size;
    ngx_uint_t                         i, j;
    ngx_atomic_uint_t                  n;
    ngx_http_dify_metrics_family_t    *f;
    ngx_http_dify_metrics_fallback_t  *fb;

    size = 0;

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NPLAIN; i++) {
        f = &ngx_http_dify_metrics_plain[i];

        size += ngx_http_dify_metrics_header_size(f, "counter")
                + f->name.len + sizeof(" \n") - 1
                + ngx_http_dify_metrics_len(snap->counters[i]);
    }

    f = &ngx_http_dify_metrics_rejected_f;

    size += ngx_http_dify_metrics_header_size(f, "counter");

    for (i = 0; i < NGX_HTTP_DIFY_NCODES; i++) {
        for (j = 0; j < NGX_HTTP_DIFY_METRICS_NSTATUS; j++) {

            if (snap->rejected[i][j] == 0) {
                continue;
            }

            size += f->name.len + sizeof("{status=\"\",code=\"\"} \n") - 1
                    + sizeof("400") - 1 + ngx_http_dify_codes[i].len
                    + ngx_http_dify_metrics_len(snap->rejected[i][j]);
        }
    }

    f = &ngx_http_dify_metrics_fallback_f;

    size += ngx_http_dify_metrics_header_size(f, "counter");

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NFALLBACK; i++) {
        fb = &ngx_http_dify_metrics_fallback[i];
        n = snap->counters[NGX_HTTP_DIFY_METRICS_NPLAIN + i];

        size += f->name.len + sizeof("{mode=\"\",result=\"\"} \n") - 1
                + fb->mode.len + fb->result.len
                + ngx_http_dify_metrics_len(n);
    }

    f = &ngx_http_dify_metrics_errors_f;

    size += ngx_http_dify_metrics_header_size(f, "counter");

    for (i = DIFY_REDIS_ERR_NONE + 1; i < DIFY_REDIS_ERR_N; i++) {
        size += f->name.len + sizeof("{class=\"\"} \n") - 1
                + ngx_strlen(dify_redis_error_name(i))
                + ngx_http_dify_metrics_len(snap->errors[i]);
    }

    if (snap->node.len && snap->nnodes == 0) {
        f = &ngx_http_dify_metrics_up_f;

        size += ngx_http_dify_metrics_header_size(f, "gauge")
                + f->name.len + sizeof("{node=\"\"} \n") - 1
                + ngx_http_dify_metrics_label_len(&snap->node)
                + ngx_http_dify_metrics_len((ngx_atomic_uint_t) snap->redis_up);
    }

    if (snap->node.len && snap->nnodes) {
        f = &ngx_http_dify_metrics_up_f;

        size += ngx_http_dify_metrics_header_size(f, "gauge");

        for (i = 0; i < snap->nnodes; i++) {
            size += f->name.len + sizeof("{node=\"\"} \n") - 1
                    + ngx_http_dify_metrics_label_len(&snap->node_names[i])
                    + ngx_http_dify_metrics_len(
                          (ngx_atomic_uint_t) snap->node_up[i]);
        }
    }

    f = &ngx_http_dify_metrics_node_f;

    size += ngx_http_dify_metrics_header_size(f, "counter");

    for (i = 0; i < snap->nnodes; i++) {
        size += f->name.len + sizeof("{node=\"\"} \n") - 1
                + ngx_http_dify_metrics_label_len(&snap->node_names[i])
                + ngx_http_dify_metrics_len(snap->node_commands[i]);
    }

    f = &ngx_http_dify_metrics_rtt_f;

    size += ngx_http_dify_metrics_header_size(f, "histogram");

    n = 0;

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NBUCKETS; i++) {
        n += snap->rtt[i];

        size += f->name.len + sizeof("_bucket{le=\"\"} \n") - 1
                + ngx_http_dify_metrics_le[i].len
                + ngx_http_dify_metrics_len(n);
    }

    size += f->name.len + sizeof("_sum .000000\n") - 1
            + ngx_http_dify_metrics_len(snap->rtt_sum / 1000000);

    size += f->name.len + sizeof("_count \n") - 1
            + ngx_http_dify_metrics_len(n);

    return size;
}


static u_char *
ngx_http_dify_metrics_write(u_char *p, ngx_http_dify_metrics_snap_t *snap)
{
    ngx_uint_t                         i, j;
    ngx_atomic_uint_t                  n;
    ngx_http_dify_metrics_family_t    *f;
    ngx_http_dify_metrics_fallback_t  *fb;

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NPLAIN; i++) {
        f = &ngx_http_dify_metrics_plain[i];

        p = ngx_http_dify_metrics_header(p, f, "counter");
        p = ngx_sprintf(p, "%V %uA\n", &f->name, snap->counters[i]);
    }

    /* only the label sets seen, in the order of the codes */

    f = &ngx_http_dify_metrics_rejected_f;

    p = ngx_http_dify_metrics_header(p, f, "counter");

    for (i = 0; i < NGX_HTTP_DIFY_NCODES; i++) {
        for (j = 0; j < NGX_HTTP_DIFY_METRICS_NSTATUS; j++) {

            if (snap->rejected[i][j] == 0) {
                continue;
            }

            p = ngx_sprintf(p, "%V{status=\"%ui\",code=\"%V\"} %uA\n",
                            &f->name, j + NGX_HTTP_DIFY_METRICS_STATUS_MIN,
                            &ngx_http_dify_codes[i], snap->rejected[i][j]);
        }
    }

    /* all four label sets, zero or not */

    f = &ngx_http_dify_metrics_fallback_f;

    p = ngx_http_dify_metrics_header(p, f, "counter");

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NFALLBACK; i++) {
        fb = &ngx_http_dify_metrics_fallback[i];

        p = ngx_sprintf(p, "%V{mode=\"%V\",result=\"%V\"} %uA\n",
                        &f->name, &fb->mode, &fb->result,
                        snap->counters[NGX_HTTP_DIFY_METRICS_NPLAIN + i]);
    }

    /* every class, zero or not */

    f = &ngx_http_dify_metrics_errors_f;

    p = ngx_http_dify_metrics_header(p, f, "counter");

    for (i = DIFY_REDIS_ERR_NONE + 1; i < DIFY_REDIS_ERR_N; i++) {
        p = ngx_sprintf(p, "%V{class=\"%s\"} %uA\n", &f->name,
                        dify_redis_error_name(i), snap->errors[i]);
    }

    /* by node once a connection has named one, else as configured */

    if (snap->node.len && snap->nnodes == 0) {
        f = &ngx_http_dify_metrics_up_f;

        p = ngx_http_dify_metrics_header(p, f, "gauge");
        p = ngx_sprintf(p, "%V{node=\"", &f->name);
        p = ngx_http_dify_metrics_label(p, &snap->node);
        p = ngx_sprintf(p, "\"} %uA\n", (ngx_atomic_uint_t) snap->redis_up);
    }

    if (snap->node.len && snap->nnodes) {
        f = &ngx_http_dify_metrics_up_f;

        p = ngx_http_dify_metrics_header(p, f, "gauge");

        for (i = 0; i < snap->nnodes; i++) {
            p = ngx_sprintf(p, "%V{node=\"", &f->name);
            p = ngx_http_dify_metrics_label(p, &snap->node_names[i]);
            p = ngx_sprintf(p, "\"} %uA\n",
                            (ngx_atomic_uint_t) snap->node_up[i]);
        }
    }

    f = &ngx_http_dify_metrics_node_f;

    p = ngx_http_dify_metrics_header(p, f, "counter");

    for (i = 0; i < snap->nnodes; i++) {
        p = ngx_sprintf(p, "%V{node=\"", &f->name);
        p = ngx_http_dify_metrics_label(p, &snap->node_names[i]);
        p = ngx_sprintf(p, "\"} %uA\n", snap->node_commands[i]);
    }

    /*
     * the buckets are stored apart and summed here, so they are
     * cumulative and _count equals the +Inf bucket even while workers
     * write
     */

    f = &ngx_http_dify_metrics_rtt_f;

    p = ngx_http_dify_metrics_header(p, f, "histogram");

    n = 0;

    for (i = 0; i < NGX_HTTP_DIFY_METRICS_NBUCKETS; i++) {
        n += snap->rtt[i];

        p = ngx_sprintf(p, "%V_bucket{le=\"%V\"} %uA\n",
                        &f->name, &ngx_http_dify_metrics_le[i], n);
    }

    p = ngx_sprintf(p, "%V_sum %uA.%06uA\n", &f->name,
                    snap->rtt_sum / 1000000, snap->rtt_sum % 1000000);

    p = ngx_sprintf(p, "%V_count %uA\n", &f->name, n);

    return p;
}


/* a label value: '\\', '"' and LF escaped, as the text format wants */

static size_t
ngx_http_dify_metrics_label_len(ngx_str_t *v)
{
    size_t  i, len;

    len = v->len;

    for (i = 0; i < v->len; i++) {
        if (v->data[i] == '\\' || v->data[i] == '"' || v->data[i] == '\n') {
            len++;
        }
    }

    return len;
}


static u_char *
ngx_http_dify_metrics_label(u_char *p, ngx_str_t *v)
{
    size_t  i;

    for (i = 0; i < v->len; i++) {
        if (v->data[i] == '\\' || v->data[i] == '"') {
            *p++ = '\\';

        } else if (v->data[i] == '\n') {
            *p++ = '\\';
            *p++ = 'n';
            continue;
        }

        *p++ = v->data[i];
    }

    return p;
}


/* the number of decimal digits of n */

static size_t
ngx_http_dify_metrics_len(ngx_atomic_uint_t n)
{
    size_t  len;

    for (len = 1; n >= 10; n /= 10) {
        len++;
    }

    return len;
}


static size_t
ngx_http_dify_metrics_header_size(ngx_http_dify_metrics_family_t *f,
    const char *type)
{
    return sizeof("# HELP  \n# TYPE  \n") - 1
           + 2 * f->name.len + f->help.len + ngx_strlen(type);
}


static u_char *
ngx_http_dify_metrics_header(u_char *p, ngx_http_dify_metrics_family_t *f,
    const char *type)
{
    return ngx_sprintf(p, "# HELP %V %V\n# TYPE %V %s\n",
                       &f->name, &f->help, &f->name, type);
}


char *
ngx_http_dify_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t   *clcf;
    ngx_http_dify_main_conf_t  *mcf;

    /* the zone is there even if the module's init has not run yet */

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_dify_status_module);

    if (ngx_http_dify_metrics_init_conf(cf, mcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_dify_metrics_handler;

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_dify_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf)
{
    size_t           size;
    ngx_shm_zone_t  *shm_zone;

    if (mcf->metrics_zone != NULL) {
        return NGX_OK;
    }

    /*
     * The size must be the same from one cycle to the next for nginx
     * to hand the zone over on reload; room is left for the slab
     * allocator's own pages.
     */

    size = 8 * ngx_pagesize
           + ngx_align(sizeof(ngx_http_dify_metrics_sh_t), ngx_pagesize);

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_dify_metrics_zone_name,
                                     size, &ngx_http_dify_status_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_dify_metrics_init_zone;

    mcf->metrics_zone = shm_zone;

    return NGX_OK;
}
