
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Redis Cluster, per worker: the slot map (CLUSTER SLOTS, read from
 * any node the worker knows), one transport connection per node,
 * opened when a command first goes there, and each command routed by
 * the slot of its first key.  A MOVED reply updates that slot at once,
 * asks for the whole map again (at most every
 * NGX_HTTP_DIFY_CLUSTER_REFRESH_MIN) and resends the command to the
 * node named; an ASK reply sends ASKING and the command, back to back,
 * on the node named; at most NGX_HTTP_DIFY_CLUSTER_REDIRECTS of both.
 * A lost connection, TRYAGAIN and CLUSTERDOWN park the command for a
 * moment, or until the next map, and try again; every resend runs in
 * what is left of the command's own timeout, and a command that gets
 * no answer in time goes back to its caller without one: the fallback,
 * for that command's key alone.
 *
 * The map is read again when a connection to a node is new (a
 * reconnect), and every NGX_HTTP_DIFY_CLUSTER_REFRESH.  Nodes are kept
 * (at most NGX_HTTP_DIFY_CLUSTER_NODES) and their connections too, so
 * that a node that leaves the map and comes back, as a failed primary
 * does, costs nothing more.  Each node's connection loads the scripts
 * in its handshake, as the single server's does: scripts are not
 * replicated.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_CLUSTER_NODES        64
#define NGX_HTTP_DIFY_CLUSTER_REDIRECTS    5
#define NGX_HTTP_DIFY_CLUSTER_REFRESH      5000     /* in milliseconds */
#define NGX_HTTP_DIFY_CLUSTER_REFRESH_MIN  100      /* in milliseconds */
#define NGX_HTTP_DIFY_CLUSTER_SLOTS_WAIT   1000     /* in milliseconds */
#define NGX_HTTP_DIFY_CLUSTER_RETRY        10       /* in milliseconds */
#define NGX_HTTP_DIFY_CLUSTER_NONE         0xffff   /* a slot's node */


typedef struct {
    ngx_http_dify_redis_conf_t     conf;
    ngx_http_dify_redis_conn_t    *conn;        /* NULL: not yet opened */
    ngx_uint_t                     epoch;       /* conn's, last seen */
    unsigned                       unusable:1;  /* a name, no resolver */
    unsigned                       primary:1;   /* in the last map read */
    unsigned                       now:1;       /* in the map being read */
} ngx_http_dify_cluster_node_t;


struct ngx_http_dify_cluster_s {
    ngx_cycle_t                   *cycle;
    ngx_log_t                     *log;
    ngx_http_dify_main_conf_t     *mcf;

    ngx_uint_t                     nnodes;      /* the seeds first */
    ngx_uint_t                     nseeds;
    ngx_http_dify_cluster_node_t   nodes[NGX_HTTP_DIFY_CLUSTER_NODES];
    uint16_t                       slots[DIFY_CLUSTER_SLOTS];
    ngx_uint_t                     seed;        /* the next unknown slot */

    ngx_queue_t                    cmds;        /* in flight */
    ngx_queue_t                    parked;      /* waiting to try again */

    /* the slot map */
    ngx_event_t                    periodic;
    ngx_event_t                    soon;        /* a refresh held back */
    ngx_http_dify_redis_cmd_t     *refreshing;  /* CLUSTER SLOTS sent */
    ngx_uint_t                     asked;       /* the node asked */
    ngx_uint_t                     next;        /* the next to ask */
    ngx_uint_t                     attempts;    /* of this refresh */
    ngx_msec_t                     refreshed;   /* last started */
    unsigned                       logged_full:1;
    unsigned                       logged_map:1; /* no map, logged */
};


struct ngx_http_dify_cluster_cmd_s {
    ngx_http_dify_cluster_t       *cl;
    ngx_queue_t                    queue;       /* cmds, or parked */
    ngx_http_dify_redis_pt         handler;
    void                          *data;
    int                            argc;
    const char                   **argv;        /* the caller's */
    const size_t                  *argvlen;
    ngx_uint_t                     slot;

    ngx_http_dify_redis_cmd_t     *cmd;         /* in flight */
    ngx_uint_t                     node;        /* where it went */
    ngx_uint_t                     redirects;
    ngx_msec_t                     deadline;    /* when parked */
    ngx_event_t                    timer;       /* when parked */

    /* the reply being handed over, for ngx_http_dify_cluster_last() */
    ngx_http_dify_redis_cmd_t     *last;

    unsigned                       asking:1;    /* ASKING before it */
    unsigned                       parked:1;
    unsigned                       again:1;     /* the same node again */
};


static ngx_int_t ngx_http_dify_cluster_add_seeds(ngx_http_dify_cluster_t *cl);
static ngx_int_t ngx_http_dify_cluster_node(ngx_http_dify_cluster_t *cl,
    u_char *host, size_t host_len, ngx_uint_t port);
static ngx_http_dify_redis_conn_t *ngx_http_dify_cluster_conn(
    ngx_http_dify_cluster_t *cl, ngx_uint_t n);
static ngx_int_t ngx_http_dify_cluster_write(
    ngx_http_dify_cluster_cmd_t *ccmd, ngx_uint_t n, ngx_uint_t asking,
    ngx_msec_t timeout);
static void ngx_http_dify_cluster_reply(redisReply *reply, void *data);
static void ngx_http_dify_cluster_asking(redisReply *reply, void *data);
static void ngx_http_dify_cluster_park(ngx_http_dify_cluster_cmd_t *ccmd,
    ngx_msec_t left, ngx_uint_t again);
static void ngx_http_dify_cluster_retry_handler(ngx_event_t *ev);
static void ngx_http_dify_cluster_retry(ngx_http_dify_cluster_cmd_t *ccmd);
static void ngx_http_dify_cluster_wake(ngx_http_dify_cluster_t *cl);
static void ngx_http_dify_cluster_done(ngx_http_dify_cluster_cmd_t *ccmd,
    redisReply *reply);
static void ngx_http_dify_cluster_refresh(ngx_http_dify_cluster_t *cl);
static void ngx_http_dify_cluster_ask_slots(ngx_http_dify_cluster_t *cl);
static void ngx_http_dify_cluster_slots(redisReply *reply, void *data);
static void ngx_http_dify_cluster_refresh_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_dify_cluster_is(redisReply *reply,
    const char *word, size_t len);


ngx_http_dify_cluster_t *
ngx_http_dify_cluster_create(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf)
{
    ngx_uint_t                i;
    ngx_http_dify_cluster_t  *cl;

    cl = ngx_pcalloc(cycle->pool, sizeof(ngx_http_dify_cluster_t));
    if (cl == NULL) {
        return NULL;
    }

    cl->cycle = cycle;
    cl->log = cycle->log;
    cl->mcf = mcf;

    for (i = 0; i < DIFY_CLUSTER_SLOTS; i++) {
        cl->slots[i] = NGX_HTTP_DIFY_CLUSTER_NONE;
    }

    ngx_queue_init(&cl->cmds);
    ngx_queue_init(&cl->parked);

    cl->periodic.handler = ngx_http_dify_cluster_refresh_handler;
    cl->periodic.data = cl;
    cl->periodic.log = cycle->log;
    cl->periodic.cancelable = 1;

    cl->soon.handler = ngx_http_dify_cluster_refresh_handler;
    cl->soon.data = cl;
    cl->soon.log = cycle->log;
    cl->soon.cancelable = 1;

    if (ngx_http_dify_cluster_add_seeds(cl) != NGX_OK) {
        return NULL;
    }

    /* the first map, from the first seed that answers */

    ngx_http_dify_cluster_refresh(cl);

    return cl;
}


void
ngx_http_dify_cluster_close(ngx_http_dify_cluster_t *cl)
{
    ngx_uint_t                    i;
    ngx_queue_t                  *q;
    ngx_http_dify_cluster_cmd_t  *ccmd;

    if (cl->periodic.timer_set) {
        ngx_del_timer(&cl->periodic);
    }

    if (cl->soon.timer_set) {
        ngx_del_timer(&cl->soon);
    }

    /* the transport frees its commands and calls nobody back */

    for (i = 0; i < cl->nnodes; i++) {
        if (cl->nodes[i].conn != NULL) {
            ngx_http_dify_redis_conn_close(cl->nodes[i].conn);
        }
    }

    cl->refreshing = NULL;

    while (!ngx_queue_empty(&cl->parked)) {
        q = ngx_queue_head(&cl->parked);
        ngx_queue_remove(q);
        ngx_queue_insert_tail(&cl->cmds, q);
    }

    while (!ngx_queue_empty(&cl->cmds)) {
        q = ngx_queue_head(&cl->cmds);
        ccmd = ngx_queue_data(q, ngx_http_dify_cluster_cmd_t, queue);

        ngx_queue_remove(q);

        if (ccmd->timer.timer_set) {
            ngx_del_timer(&ccmd->timer);
        }

        ngx_free(ccmd);
    }
}


/*
 * A command for the given slot; argv and argvlen stay the caller's and
 * must live until the handler is called or the command is cancelled.
 * NULL when the slot's node cannot take it now: the caller falls back
 * at once.
 */

ngx_http_dify_cluster_cmd_t *
ngx_http_dify_cluster_send(ngx_http_dify_cluster_t *cl, ngx_uint_t slot,
    ngx_http_dify_redis_pt handler, void *data, ngx_msec_t timeout,
    int argc, const char **argv, const size_t *argvlen)
{
    ngx_uint_t                    n;
    ngx_http_dify_cluster_cmd_t  *ccmd;

    ccmd = ngx_alloc(sizeof(ngx_http_dify_cluster_cmd_t), cl->log);
    if (ccmd == NULL) {
        return NULL;
    }

    ngx_memzero(ccmd, sizeof(ngx_http_dify_cluster_cmd_t));

    ccmd->cl = cl;
    ccmd->handler = handler;
    ccmd->data = data;
    ccmd->argc = argc;
    ccmd->argv = argv;
    ccmd->argvlen = argvlen;
    ccmd->slot = slot & (DIFY_CLUSTER_SLOTS - 1);

    ccmd->timer.handler = ngx_http_dify_cluster_retry_handler;
    ccmd->timer.data = ccmd;
    ccmd->timer.log = cl->log;

    n = cl->slots[ccmd->slot];

    if (n == NGX_HTTP_DIFY_CLUSTER_NONE) {
        /* no map yet, or the slot is not served: a seed redirects */
        n = cl->seed++ % cl->nseeds;
    }

    if (ngx_http_dify_cluster_write(ccmd, n, 0, timeout) != NGX_OK) {
        ngx_free(ccmd);
        return NULL;
    }

    ngx_queue_insert_tail(&cl->cmds, &ccmd->queue);

    return ccmd;
}


void
ngx_http_dify_cluster_cancel(ngx_http_dify_cluster_cmd_t *ccmd)
{
    if (ccmd == NULL) {
        return;
    }

    ngx_http_dify_redis_conn_cancel(ccmd->cmd);

    if (ccmd->timer.timer_set) {
        ngx_del_timer(&ccmd->timer);
    }

    ngx_queue_remove(&ccmd->queue);
    ngx_free(ccmd);
}


/*
 * The node serving slot in the map, for a caller that puts the commands
 * of one node together; NGX_ERROR when the map does not know.
 */

ngx_int_t
ngx_http_dify_cluster_slot_node(ngx_http_dify_cluster_t *cl,
    ngx_uint_t slot)
{
    ngx_uint_t  n;

    n = cl->slots[slot & (DIFY_CLUSTER_SLOTS - 1)];

    if (n == NGX_HTTP_DIFY_CLUSTER_NONE) {
        return NGX_ERROR;
    }

    return n;
}


void
ngx_http_dify_cluster_stale(ngx_http_dify_cluster_t *cl)
{
    ngx_http_dify_cluster_refresh(cl);
}


/*
 * In the handler: the transport's command the reply came with (for its
 * epoch and what is left of its time), and the connection; NULL when
 * no reply came
 */

ngx_http_dify_redis_cmd_t *
ngx_http_dify_cluster_last(ngx_http_dify_cluster_cmd_t *ccmd,
    ngx_http_dify_redis_conn_t **conn)
{
    *conn = ccmd->cl->nodes[ccmd->node].conn;

    return ccmd->last;
}


static ngx_int_t
ngx_http_dify_cluster_add_seeds(ngx_http_dify_cluster_t *cl)
{
    ngx_uint_t                     i, n;
    ngx_http_dify_redis_conf_t    *seeds;
    ngx_http_dify_cluster_node_t  *node;

    seeds = cl->mcf->redis_addrs->elts;
    n = ngx_min(cl->mcf->redis_addrs->nelts, NGX_HTTP_DIFY_CLUSTER_NODES);

    for (i = 0; i < n; i++) {
        node = &cl->nodes[i];

        node->conf = seeds[i];
    }

    cl->nnodes = n;
    cl->nseeds = n;

    return NGX_OK;
}


/*
 * The node at host:port, known or added (an empty host: the host of
 * the node last asked for the map); -1 when the table is full
 */

static ngx_int_t
ngx_http_dify_cluster_node(ngx_http_dify_cluster_t *cl, u_char *host,
    size_t host_len, ngx_uint_t port)
{
    u_char                        *p;
    size_t                         len;
    ngx_uint_t                     i, v6;
    ngx_addr_t                    *addr;
    const char                    *err;
    dify_redis_addr_t              a;
    ngx_http_dify_redis_conf_t    *conf;
    ngx_http_dify_cluster_node_t  *node;

    for (i = 0; i < cl->nnodes; i++) {
        conf = &cl->nodes[i].conf;

        if (conf->port == port && conf->host.len == host_len
            && ngx_strncasecmp(conf->host.data, host, host_len) == 0)
        {
            return i;
        }
    }

    if (cl->nnodes == NGX_HTTP_DIFY_CLUSTER_NODES) {
        if (!cl->logged_full) {
            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "redis cluster: more than %d nodes, \"%*s:%ui\" "
                          "left out", NGX_HTTP_DIFY_CLUSTER_NODES,
                          host_len, host, port);
            cl->logged_full = 1;
        }

        return -1;
    }

    /* "host:port", or "[v6]:port", NUL-terminated */

    v6 = (ngx_strlchr(host, host + host_len, ':') != NULL);
    len = host_len + 2 * v6 + sizeof(":65535");

    p = ngx_pnalloc(cl->cycle->pool, len + host_len + 1);
    if (p == NULL) {
        return -1;
    }

    node = &cl->nodes[cl->nnodes];
    conf = &node->conf;

    /* the settings of dify_status_redis, this node's address */

    *conf = *cl->mcf->redis;

    conf->address.data = p;
    conf->address.len = ngx_sprintf(p, v6 ? "[%*s]:%ui" : "%*s:%ui",
                                    host_len, host, port)
                        - p;
    p[conf->address.len] = '\0';

    conf->host.data = p + len;
    conf->host.len = host_len;
    ngx_memcpy(conf->host.data, host, host_len);
    conf->host.data[host_len] = '\0';

    conf->port = (in_port_t) port;
    conf->addrs = NULL;
    conf->naddrs = 0;
    conf->is_name = 0;
    conf->resolver = NULL;

#if (NGX_SSL)
    if (conf->ssl && cl->mcf->ssl_name.len == 0) {
        conf->ssl_name = conf->host;
    }
#endif

    if (dify_redis_parse_addr((const char *) conf->address.data,
                              conf->address.len, &a, &err)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                      "redis cluster: node \"%V\" left out: %s",
                      &conf->address, err);
        return -1;
    }

    if (a.type == DIFY_REDIS_ADDR_NAME) {
        conf->is_name = 1;
        conf->resolver = cl->mcf->redis_resolver;
        conf->resolver_timeout = cl->mcf->redis_resolver_timeout;

        if (conf->resolver == NULL) {
            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "redis cluster: node \"%V\" is a name, and "
                          "there is no \"resolver\" at http level: its "
                          "slots take the fallback", &conf->address);
            node->unusable = 1;
        }

    } else {
        addr = ngx_pcalloc(cl->cycle->pool, sizeof(ngx_addr_t));
        if (addr == NULL) {
            return -1;
        }

        if (ngx_parse_addr_port(cl->cycle->pool, addr, conf->address.data,
                                conf->address.len)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "redis cluster: node \"%V\" left out: invalid "
                          "address", &conf->address);
            return -1;
        }

        addr->name = conf->address;

        conf->addrs = addr;
        conf->naddrs = 1;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, cl->log, 0,
                   "dify_status redis cluster: node \"%V\"", &conf->address);

    return cl->nnodes++;
}


/* the node's connection, opened now if it was not; NULL: unusable */

static ngx_http_dify_redis_conn_t *
ngx_http_dify_cluster_conn(ngx_http_dify_cluster_t *cl, ngx_uint_t n)
{
    ngx_uint_t                     epoch;
    ngx_http_dify_cluster_node_t  *node;

    node = &cl->nodes[n];

    if (node->unusable) {
        return NULL;
    }

    if (node->conn == NULL) {
        node->conn = ngx_http_dify_redis_conn_create(cl->cycle, &node->conf);
        if (node->conn == NULL) {
            node->unusable = 1;
            return NULL;
        }

        node->epoch = ngx_http_dify_redis_conn_epoch(node->conn);

        return node->conn;
    }

    /* a new connection since the last command: the map may be new too */

    epoch = ngx_http_dify_redis_conn_epoch(node->conn);

    if (epoch != node->epoch) {
        node->epoch = epoch;
        ngx_http_dify_cluster_refresh(cl);
    }

    return node->conn;
}


/* the command to node n, with ASKING first when asking */

static ngx_int_t
ngx_http_dify_cluster_write(ngx_http_dify_cluster_cmd_t *ccmd, ngx_uint_t n,
    ngx_uint_t asking, ngx_msec_t timeout)
{
    size_t                       len;
    const char                  *argv;
    ngx_http_dify_cluster_t     *cl;
    ngx_http_dify_redis_cmd_t   *cmd;
    ngx_http_dify_redis_conn_t  *conn;

    cl = ccmd->cl;

    conn = ngx_http_dify_cluster_conn(cl, n);
    if (conn == NULL) {
        return NGX_ERROR;
    }

    if (asking) {
        /* the same connection, queued back to back: written in order */

        argv = "ASKING";
        len = sizeof("ASKING") - 1;

        cmd = ngx_http_dify_redis_conn_send(conn,
                                            ngx_http_dify_cluster_asking,
                                            NULL, timeout, 1, &argv, &len);
        if (cmd == NULL) {
            ngx_http_dify_cluster_refresh(cl);
            return NGX_ERROR;
        }
    }

    ccmd->cmd = ngx_http_dify_redis_conn_send(conn,
                                              ngx_http_dify_cluster_reply,
                                              ccmd, timeout, ccmd->argc,
                                              ccmd->argv, ccmd->argvlen);
    if (ccmd->cmd == NULL) {
        /* the node is down: its replica may be promoted by now */
        ngx_http_dify_cluster_refresh(cl);
        return NGX_ERROR;
    }

    ccmd->node = n;
    ccmd->asking = asking;

    return NGX_OK;
}


static void
ngx_http_dify_cluster_reply(redisReply *reply, void *data)
{
    ngx_http_dify_cluster_cmd_t *ccmd = data;

    ngx_int_t                   n;
    ngx_str_t                   host;
    ngx_msec_t                  left;
    ngx_http_dify_cluster_t    *cl;
    dify_cluster_redirect_t     rd;
    ngx_http_dify_redis_cmd_t  *cmd;

    cl = ccmd->cl;
    cmd = ccmd->cmd;

    ccmd->cmd = NULL;
    ccmd->last = cmd;

    left = ngx_http_dify_redis_conn_left(cmd);

    if (reply == NULL) {

        if (left == 0) {
            /* no reply in time */
            ngx_http_dify_cluster_done(ccmd, NULL);
            return;
        }

        /* the connection went away: a failover, perhaps */

        ngx_http_dify_cluster_refresh(cl);
        ngx_http_dify_cluster_park(ccmd, left, 0);
        return;
    }

    if (reply->type != REDIS_REPLY_ERROR || left == 0) {
        ngx_http_dify_cluster_done(ccmd, reply);
        return;
    }

    if (dify_cluster_parse_redirect(reply->str, reply->len, &rd)
        != DIFY_CLUSTER_REDIRECT_NONE)
    {
        if (rd.kind == DIFY_CLUSTER_REDIRECT_MOVED) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_MOVED);

        } else {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ASK);
        }

        if (++ccmd->redirects > NGX_HTTP_DIFY_CLUSTER_REDIRECTS) {
            ngx_http_dify_cluster_done(ccmd, reply);
            return;
        }

        /* an empty endpoint: the host of the node that answered */

        if (rd.host_len == 0) {
            host = cl->nodes[ccmd->node].conf.host;

        } else {
            host.data = (u_char *) rd.host;
            host.len = rd.host_len;
        }

        n = ngx_http_dify_cluster_node(cl, host.data, host.len, rd.port);

        if (n < 0) {
            ngx_http_dify_cluster_done(ccmd, reply);
            return;
        }

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, cl->log, 0,
                       "dify_status redis cluster: %s %ui to \"%V\"",
                       rd.kind == DIFY_CLUSTER_REDIRECT_MOVED ? "moved"
                                                              : "ask",
                       (ngx_uint_t) rd.slot, &cl->nodes[n].conf.address);

        if (rd.kind == DIFY_CLUSTER_REDIRECT_MOVED) {
            cl->slots[rd.slot] = (uint16_t) n;
            ngx_http_dify_cluster_refresh(cl);
        }

        if (ngx_http_dify_cluster_write(ccmd, n,
                                        rd.kind == DIFY_CLUSTER_REDIRECT_ASK,
                                        left)
            != NGX_OK)
        {
            ngx_http_dify_cluster_done(ccmd, reply);
        }

        return;
    }

    /*
     * TRYAGAIN: the slot is being migrated and the keys are split for
     * now; the same node again (with ASKING, if it was asked so), in a
     * moment.  CLUSTERDOWN: the map may have changed (a failover under
     * way).  Both within the command's time.
     */

    if (left > NGX_HTTP_DIFY_CLUSTER_RETRY) {

        if (ngx_http_dify_cluster_is(reply, "TRYAGAIN", 8)) {
            ngx_http_dify_cluster_park(ccmd, left, 1);
            return;
        }

        if (ngx_http_dify_cluster_is(reply, "CLUSTERDOWN", 11)) {
            ngx_http_dify_cluster_refresh(cl);
            ngx_http_dify_cluster_park(ccmd, left, 0);
            return;
        }
    }

    ngx_http_dify_cluster_done(ccmd, reply);
}


static void
ngx_http_dify_cluster_asking(redisReply *reply, void *data)
{
    /* "+OK", or nothing: the command behind it tells */
}


static void
ngx_http_dify_cluster_park(ngx_http_dify_cluster_cmd_t *ccmd,
    ngx_msec_t left, ngx_uint_t again)
{
    ngx_queue_remove(&ccmd->queue);
    ngx_queue_insert_tail(&ccmd->cl->parked, &ccmd->queue);

    ccmd->parked = 1;
    ccmd->again = again;
    ccmd->last = NULL;
    ccmd->deadline = ngx_current_msec + left;

    ngx_add_timer(&ccmd->timer, ngx_min(left, NGX_HTTP_DIFY_CLUSTER_RETRY));
}


static void
ngx_http_dify_cluster_retry_handler(ngx_event_t *ev)
{
    ngx_http_dify_cluster_retry(ev->data);
}


static void
ngx_http_dify_cluster_retry(ngx_http_dify_cluster_cmd_t *ccmd)
{
    ngx_uint_t                n, asking;
    ngx_msec_int_t            left;
    ngx_http_dify_cluster_t  *cl;

    cl = ccmd->cl;

    if (ccmd->timer.timer_set) {
        ngx_del_timer(&ccmd->timer);
    }

    ngx_queue_remove(&ccmd->queue);
    ngx_queue_insert_tail(&cl->cmds, &ccmd->queue);

    ccmd->parked = 0;

    left = (ngx_msec_int_t) (ccmd->deadline - ngx_current_msec);

    if (left <= 0) {
        ngx_http_dify_cluster_done(ccmd, NULL);
        return;
    }

    if (ccmd->again) {
        n = ccmd->node;
        asking = ccmd->asking;

    } else {
        n = cl->slots[ccmd->slot];
        asking = 0;

        if (n == NGX_HTTP_DIFY_CLUSTER_NONE) {
            n = ccmd->node;
        }
    }

    if (ngx_http_dify_cluster_write(ccmd, n, asking, (ngx_msec_t) left)
        != NGX_OK)
    {
        ngx_http_dify_cluster_done(ccmd, NULL);
    }
}


/* a new map, or none to be had: the commands waiting for one try again */

static void
ngx_http_dify_cluster_wake(ngx_http_dify_cluster_t *cl)
{
    ngx_queue_t                   waiting, *q;
    ngx_http_dify_cluster_cmd_t  *ccmd;

    if (ngx_queue_empty(&cl->parked)) {
        return;
    }

    /* the handlers called may park other commands meanwhile */

    waiting = cl->parked;
    waiting.next->prev = &waiting;
    waiting.prev->next = &waiting;

    ngx_queue_init(&cl->parked);

    while (!ngx_queue_empty(&waiting)) {
        q = ngx_queue_head(&waiting);
        ccmd = ngx_queue_data(q, ngx_http_dify_cluster_cmd_t, queue);

        if (ccmd->again) {
            /* TRYAGAIN waits for the migration, not for the map */
            ngx_queue_remove(q);
            ngx_queue_insert_tail(&cl->parked, q);
            continue;
        }

        ngx_http_dify_cluster_retry(ccmd);
    }
}


static void
ngx_http_dify_cluster_done(ngx_http_dify_cluster_cmd_t *ccmd,
    redisReply *reply)
{
    ngx_queue_remove(&ccmd->queue);

    ccmd->handler(reply, ccmd->data);

    ngx_free(ccmd);
}


/* the slot map again: now, or once the last is old enough */

static void
ngx_http_dify_cluster_refresh(ngx_http_dify_cluster_t *cl)
{
    ngx_msec_int_t  elapsed;

    if (cl->refreshing != NULL || cl->soon.timer_set) {
        return;
    }

    elapsed = (ngx_msec_int_t) (ngx_current_msec - cl->refreshed);

    if (cl->refreshed != 0 && elapsed >= 0
        && elapsed < NGX_HTTP_DIFY_CLUSTER_REFRESH_MIN)
    {
        ngx_add_timer(&cl->soon, NGX_HTTP_DIFY_CLUSTER_REFRESH_MIN - elapsed);
        return;
    }

    cl->attempts = 0;
    cl->refreshed = ngx_current_msec;

    if (cl->refreshed == 0) {
        cl->refreshed = 1;
    }

    ngx_http_dify_cluster_ask_slots(cl);
}


/*
 * CLUSTER SLOTS to a node: the nodes already connected first, then the
 * others, each in turn, so that a node that is down is not asked again
 * and again
 */

static void
ngx_http_dify_cluster_ask_slots(ngx_http_dify_cluster_t *cl)
{
    size_t                       argvlen[2];
    ngx_uint_t                   i, n, pass;
    const char                  *argv[2];
    ngx_http_dify_redis_conn_t  *conn;

    argv[0] = "CLUSTER";
    argvlen[0] = sizeof("CLUSTER") - 1;
    argv[1] = "SLOTS";
    argvlen[1] = sizeof("SLOTS") - 1;

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < cl->nnodes; i++) {
            n = (cl->next + i) % cl->nnodes;

            if (cl->nodes[n].unusable
                || (pass == 0) != (cl->nodes[n].conn != NULL))
            {
                continue;
            }

            if (pass == 0) {
                /* a reconnect is what this refresh is for */
                conn = cl->nodes[n].conn;
                cl->nodes[n].epoch = ngx_http_dify_redis_conn_epoch(conn);

            } else {
                conn = ngx_http_dify_cluster_conn(cl, n);
                if (conn == NULL) {
                    continue;
                }
            }

            cl->refreshing = ngx_http_dify_redis_conn_send(conn,
                                              ngx_http_dify_cluster_slots,
                                              cl,
                                              NGX_HTTP_DIFY_CLUSTER_SLOTS_WAIT,
                                              2, argv, argvlen);
            if (cl->refreshing == NULL) {
                continue;
            }

                    cl->asked = n;
            cl->next = n + 1;
            cl->attempts++;

            return;
        }
    }

    /*
     * No node takes a command now: the periodic timer tries again, and
     * the commands waiting retry on their own timers (a handler is not
     * called from here: this may run inside a send)
     */

    if (!cl->periodic.timer_set) {
        ngx_add_timer(&cl->periodic, NGX_HTTP_DIFY_CLUSTER_REFRESH);
    }
}


static void
ngx_http_dify_cluster_slots(redisReply *reply, void *data)
{
    ngx_http_dify_cluster_t *cl = data;

    int                    nranges;
    uint16_t               node;
    ngx_int_t              n;
    ngx_str_t              host;
    ngx_uint_t             i, k, changed, lost, gained;
    dify_cluster_range_t  *ranges;

    cl->refreshing = NULL;

    ranges = NULL;
    nranges = -1;

    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        ranges = ngx_alloc(reply->elements * sizeof(dify_cluster_range_t)
                           + 1, cl->log);

        if (ranges != NULL) {
            nranges = dify_cluster_parse_slots(reply, ranges,
                                               reply->elements);
        }
    }

    if (nranges <= 0) {
        if (ranges != NULL) {
            ngx_free(ranges);
        }

        if (!cl->logged_map) {
            ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                          "redis cluster: no slot map from \"%V\"%s%*s",
                          &cl->nodes[cl->asked].conf.address,
                          (reply && reply->type == REDIS_REPLY_ERROR)
                          ? ": " : "",
                          (size_t) ((reply && reply->type
                                               == REDIS_REPLY_ERROR)
                                    ? ngx_min(reply->len, 256) : 0),
                          (reply && reply->type == REDIS_REPLY_ERROR)
                          ? reply->str : "");
            cl->logged_map = 1;
        }

        /* the next node at once, until each was asked once */

        if (cl->attempts < cl->nnodes) {
            ngx_http_dify_cluster_ask_slots(cl);
            return;
        }

        if (!cl->periodic.timer_set) {
            ngx_add_timer(&cl->periodic, NGX_HTTP_DIFY_CLUSTER_REFRESH);
        }

        ngx_http_dify_cluster_wake(cl);
        return;
    }

    changed = 0;

    for (i = 0; i < cl->nnodes; i++) {
        cl->nodes[i].now = 0;
    }

    for (i = 0; i < (ngx_uint_t) nranges; i++) {

        if (ranges[i].host_len == 0) {
            host = cl->nodes[cl->asked].conf.host;

        } else {
            host.data = (u_char *) ranges[i].host;
            host.len = ranges[i].host_len;
        }

        n = ngx_http_dify_cluster_node(cl, host.data, host.len,
                                       ranges[i].port);

        node = (n < 0) ? NGX_HTTP_DIFY_CLUSTER_NONE : (uint16_t) n;

        if (n >= 0) {
            cl->nodes[n].now = 1;
        }

        for (k = ranges[i].start; k <= ranges[i].end; k++) {
            if (cl->slots[k] != node) {
                cl->slots[k] = node;
                changed++;
            }
        }
    }

    ngx_free(ranges);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TOPOLOGY_REFRESHES);

    /*
     * A failover, as this worker sees it: a primary of the last map
     * serves no slot now, and a node that served none does
     */

    lost = 0;
    gained = 0;

    for (i = 0; i < cl->nnodes; i++) {
        lost += (cl->nodes[i].primary && !cl->nodes[i].now);
        gained += (!cl->nodes[i].primary && cl->nodes[i].now);
    }

    if (gained) {
        for (i = 0; i < lost; i++) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_FAILOVERS);
        }
    }

    for (i = 0; i < cl->nnodes; i++) {
        cl->nodes[i].primary = cl->nodes[i].now;
    }

    /* a new map (at start, after a failover or a migration) is logged */

    if (changed || cl->logged_map) {
        ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                      "redis cluster: slot map from \"%V\": %d ranges, "
                      "%ui slots changed",
                      &cl->nodes[cl->asked].conf.address, nranges, changed);
        cl->logged_map = 0;
    }

    /* the node that answered is asked first next time */

    cl->next = cl->asked;

    if (cl->periodic.timer_set) {
        ngx_del_timer(&cl->periodic);
    }

    ngx_add_timer(&cl->periodic, NGX_HTTP_DIFY_CLUSTER_REFRESH);

    ngx_http_dify_cluster_wake(cl);
}


static void
ngx_http_dify_cluster_refresh_handler(ngx_event_t *ev)
{
    ngx_http_dify_cluster_t *cl = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_http_dify_cluster_refresh(cl);
}


static ngx_uint_t
ngx_http_dify_cluster_is(redisReply *reply, const char *word, size_t len)
{
    return reply->len >= len
           && ngx_strncmp(reply->str, word, len) == 0
           && (reply->len == len || reply->str[len] == ' ');
}
