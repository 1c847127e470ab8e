
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Redis Sentinel: the worker's primary is the one the Sentinels name.
 * Each worker keeps two connections to every Sentinel, over the same
 * transport as the data: one for questions (SENTINEL
 * get-master-addr-by-name), one subscribed to "+switch-master".  The
 * Sentinels are asked in turn, the first that answers first next time;
 * the address named gets a new connection, which becomes the command
 * layer's only once ROLE says "master" (its handshake has loaded the
 * scripts by then).  The previous primary's connection is then dropped:
 * its commands are called back with NULL, so that their requests take
 * the fallback.
 *
 * The Sentinels are asked again on "+switch-master" (whose new address
 * is tried at once), when the primary's connection is lost or a command
 * on it times out, and when it answers READONLY (a demoted primary);
 * never more often than every NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN ms,
 * and after a round that changed nothing while the primary is down, with
 * a growing delay.  Nothing here blocks, and nothing loops: every step
 * is an event.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN  100     /* in milliseconds */
#define NGX_HTTP_DIFY_SENTINEL_BACKOFF_MAX  1000    /* in milliseconds */

/* the kind of failure last logged: each is logged once, until a success */
#define NGX_HTTP_DIFY_SENTINEL_LOG_NONE     0
#define NGX_HTTP_DIFY_SENTINEL_LOG_DOWN     1       /* none answered */
#define NGX_HTTP_DIFY_SENTINEL_LOG_UNKNOWN  2       /* none knows the name */
#define NGX_HTTP_DIFY_SENTINEL_LOG_ROLE     3       /* not a primary */
#define NGX_HTTP_DIFY_SENTINEL_LOG_ADDRESS  4       /* an address refused */


/* a data node named by the Sentinels: its pool holds all of it */
typedef struct ngx_http_dify_sentinel_node_s  ngx_http_dify_sentinel_node_t;

struct ngx_http_dify_sentinel_node_s {
    ngx_pool_t                     *pool;
    ngx_http_dify_redis_conf_t      conf;
    ngx_http_dify_redis_conn_t     *conn;
    ngx_http_dify_sentinel_node_t  *next;       /* dropped, to free */
};


struct ngx_http_dify_sentinel_s {
    ngx_http_dify_sentinel_conf_t  *conf;
    ngx_http_dify_redis_conf_t     *rcf;        /* the data nodes' */
    ngx_resolver_t                 *resolver;   /* the http level's */
    ngx_msec_t                      resolver_timeout;
    ngx_log_t                      *log;

    /* the command layer's connection: the primary's, or NULL */
    ngx_http_dify_redis_conn_t    **primary;
    ngx_http_dify_sentinel_node_t  *node;       /* of *primary */

    /* a new primary, until ROLE answers */
    ngx_http_dify_sentinel_node_t  *cand;
    ngx_http_dify_redis_cmd_t      *role;

    ngx_http_dify_redis_conn_t    **query;      /* conf->n of each */
    ngx_http_dify_redis_conn_t    **events;

    /* the round of questions under way */
    ngx_http_dify_redis_cmd_t      *ask;
    ngx_uint_t                      asking;     /* its Sentinel */
    ngx_uint_t                      first;      /* the last that answered */
    ngx_uint_t                      tried;
    ngx_uint_t                      unknown;    /* nil answers */
    ngx_msec_t                      round;      /* when it began */

    ngx_event_t                     retry;
    ngx_msec_t                      backoff;
    ngx_uint_t                      logged;     /* _LOG_* */

    /* nodes dropped in this event, freed in the next */
    ngx_http_dify_sentinel_node_t  *graves;
    ngx_event_t                     reap;

    unsigned                        exiting:1;
};


static void ngx_http_dify_sentinel_lookup(ngx_http_dify_sentinel_t *st);
static void ngx_http_dify_sentinel_ask(ngx_http_dify_sentinel_t *st);
static void ngx_http_dify_sentinel_master_reply(redisReply *reply,
    void *data);
static void ngx_http_dify_sentinel_event(redisReply *reply, void *data);
static ngx_int_t ngx_http_dify_sentinel_candidate(
    ngx_http_dify_sentinel_t *st, u_char *host, size_t len, ngx_uint_t port,
    ngx_uint_t event);
static ngx_int_t ngx_http_dify_sentinel_node_conf(
    ngx_http_dify_sentinel_t *st, ngx_http_dify_sentinel_node_t *node,
    u_char *host, size_t len, ngx_uint_t port);
static void ngx_http_dify_sentinel_role_reply(redisReply *reply,
    void *data);
static ngx_uint_t ngx_http_dify_sentinel_is(
    ngx_http_dify_sentinel_node_t *node, u_char *host, size_t len,
    ngx_uint_t port);
static void ngx_http_dify_sentinel_bury(ngx_http_dify_sentinel_t *st,
    ngx_http_dify_sentinel_node_t *node);
static void ngx_http_dify_sentinel_reap_handler(ngx_event_t *ev);
static void ngx_http_dify_sentinel_retry_handler(ngx_event_t *ev);
static void ngx_http_dify_sentinel_schedule(ngx_http_dify_sentinel_t *st);
static void ngx_http_dify_sentinel_failed(ngx_http_dify_sentinel_t *st,
    ngx_uint_t kind, const char *fmt, ...);


/*
 * dify_status_redis's parameters of Sentinel: NGX_OK when taken,
 * NGX_ERROR when invalid, NGX_DECLINED when not one of them
 */

ngx_int_t
ngx_http_dify_sentinel_parameter(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf, ngx_str_t *value)
{
    ngx_str_t                      *dst;
    ngx_http_dify_sentinel_conf_t  *scf;

    if (ngx_strncmp(value->data, "sentinel=", 9) == 0) {
        dst = NULL;

    } else if (ngx_strncmp(value->data, "sentinel_user=", 14) == 0) {
        dst = (ngx_str_t *) 1;

    } else if (ngx_strncmp(value->data, "sentinel_password=", 18) == 0) {
        dst = (ngx_str_t *) 2;

    } else {
        return NGX_DECLINED;
    }

    scf = mcf->sentinel;

    if (scf == NULL) {
        scf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_sentinel_conf_t));
        if (scf == NULL) {
            return NGX_ERROR;
        }

        mcf->sentinel = scf;
    }

    if (dst == NULL) {
        dst = &scf->name;

    } else if (dst == (ngx_str_t *) 1) {
        dst = &scf->user;

    } else {
        dst = &scf->password;
    }

    dst->data = ngx_strlchr(value->data, value->data + value->len, '=') + 1;
    dst->len = value->data + value->len - dst->data;

    /* a secret is never logged: only an empty value is invalid */

    if (dst->len == 0) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_dify_sentinel_check(ngx_conf_t *cf, ngx_http_dify_main_conf_t *mcf,
    ngx_http_dify_redis_conf_t *rcf)
{
    ngx_http_dify_sentinel_conf_t  *scf;

    scf = mcf->sentinel;

    if (scf == NULL) {
        return NGX_OK;
    }

    if (scf->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sentinel_user=\" and \"sentinel_password=\" "
                           "require \"sentinel=\"");
        return NGX_ERROR;
    }

    if (scf->user.len && scf->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sentinel_user=\" requires "
                           "\"sentinel_password=\"");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Once the http block is read, and every address's TLS and name set up
 * by the command layer: a transport configuration per Sentinel (its
 * address and authentication, no database, no script), and the same
 * subscribed to "+switch-master".
 */

ngx_int_t
ngx_http_dify_sentinel_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf)
{
    int                             len;
    char                           *cmd;
    size_t                          argvlen[2];
    ngx_str_t                      *init;
    ngx_uint_t                      i;
    const char                     *argv[2];
    ngx_http_dify_redis_conf_t     *rcf, *addrs, *q, *e;
    ngx_http_dify_sentinel_conf_t  *scf;

    scf = mcf->sentinel;
    rcf = mcf->redis;

    scf->n = mcf->redis_addrs->nelts;
    addrs = mcf->redis_addrs->elts;

    scf->query = ngx_pcalloc(cf->pool,
                             scf->n * sizeof(ngx_http_dify_redis_conf_t));
    scf->events = ngx_pcalloc(cf->pool,
                              scf->n * sizeof(ngx_http_dify_redis_conf_t));
    if (scf->query == NULL || scf->events == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "SUBSCRIBE";
    argvlen[0] = sizeof("SUBSCRIBE") - 1;
    argv[1] = "+switch-master";
    argvlen[1] = sizeof("+switch-master") - 1;

    len = redisFormatCommandArgv(&cmd, 2, argv, argvlen);
    if (len < 0) {
        return NGX_ERROR;
    }

    init = ngx_pnalloc(cf->pool, sizeof(ngx_str_t) + len);
    if (init == NULL) {
        free(cmd);
        return NGX_ERROR;
    }

    init->len = len;
    init->data = (u_char *) init + sizeof(ngx_str_t);
    ngx_memcpy(init->data, cmd, len);
    free(cmd);

    for (i = 0; i < scf->n; i++) {
        q = &scf->query[i];
        e = &scf->events[i];

        *q = addrs[i];

        q->db = 0;
        q->init = NULL;

        /* a Sentinel answers quickly or not at all */
        q->timeout = rcf->connect_timeout;

        q->user = scf->user;
        q->password = scf->password;
        q->control = 1;

        *e = *q;

        e->init = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
        if (e->init == NULL) {
            return NGX_ERROR;
        }

        if (ngx_array_push(e->init) == NULL) {
            return NGX_ERROR;
        }

        *(ngx_str_t *) e->init->elts = *init;
    }

    return NGX_OK;
}


/*
 * In init_process: the connections to the Sentinels, and the first
 * round of questions.  *primary is the command layer's connection, set
 * here once a primary is found, NULL until then.
 */

ngx_http_dify_sentinel_t *
ngx_http_dify_sentinel_create(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf, ngx_http_dify_redis_conn_t **primary)
{
    ngx_uint_t                      i;
    ngx_http_dify_sentinel_t       *st;
    ngx_http_dify_sentinel_conf_t  *scf;

    scf = mcf->sentinel;

    st = ngx_pcalloc(cycle->pool, sizeof(ngx_http_dify_sentinel_t));
    if (st == NULL) {
        return NULL;
    }

    st->conf = scf;
    st->rcf = mcf->redis;
    st->resolver = mcf->redis_resolver;
    st->resolver_timeout = mcf->redis_resolver_timeout;
    st->log = cycle->log;
    st->primary = primary;
    st->backoff = NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN;

    st->retry.handler = ngx_http_dify_sentinel_retry_handler;
    st->retry.data = st;
    st->retry.log = cycle->log;
    st->retry.cancelable = 1;

    st->reap.handler = ngx_http_dify_sentinel_reap_handler;
    st->reap.data = st;
    st->reap.log = cycle->log;

    *primary = NULL;

    st->query = ngx_pcalloc(cycle->pool,
                            scf->n * sizeof(ngx_http_dify_redis_conn_t *));
    st->events = ngx_pcalloc(cycle->pool,
                             scf->n * sizeof(ngx_http_dify_redis_conn_t *));
    if (st->query == NULL || st->events == NULL) {
        return NULL;
    }

    for (i = 0; i < scf->n; i++) {
        st->query[i] = ngx_http_dify_redis_conn_create(cycle,
                                                       &scf->query[i]);
        st->events[i] = ngx_http_dify_redis_conn_create(cycle,
                                                        &scf->events[i]);
        if (st->query[i] == NULL || st->events[i] == NULL) {
            return NULL;
        }

        ngx_http_dify_redis_conn_set_push(st->events[i],
                                          ngx_http_dify_sentinel_event, st);
    }

    /* queued behind the handshakes of the new connections */

    ngx_http_dify_sentinel_lookup(st);

    return st;
}


/* in exit_process, once the command layer has closed *primary */

void
ngx_http_dify_sentinel_destroy(ngx_http_dify_sentinel_t *st)
{
    ngx_uint_t  i;

    st->exiting = 1;

    if (st->retry.timer_set) {
        ngx_del_timer(&st->retry);
    }

    if (st->reap.posted) {
        ngx_delete_posted_event(&st->reap);
    }

    for (i = 0; i < st->conf->n; i++) {
        if (st->query[i] != NULL) {
            ngx_http_dify_redis_conn_close(st->query[i]);
        }

        if (st->events[i] != NULL) {
            ngx_http_dify_redis_conn_close(st->events[i]);
        }
    }

    if (st->cand != NULL) {
        ngx_http_dify_redis_conn_close(st->cand->conn);
        ngx_http_dify_sentinel_bury(st, st->cand);
        st->cand = NULL;
    }

    if (st->node != NULL) {
        if (*st->primary == st->node->conn) {
            *st->primary = NULL;
        }

        ngx_http_dify_redis_conn_close(st->node->conn);
        ngx_http_dify_sentinel_bury(st, st->node);
        st->node = NULL;
    }

    ngx_http_dify_sentinel_reap_handler(&st->reap);
}


/*
 * The command layer's word that the primary may have changed: a command
 * on conn lost with its connection or timed out, refused because the
 * connection is down, or answered READONLY.  A connection that is no
 * longer the primary's says nothing.
 */

void
ngx_http_dify_sentinel_suspect(ngx_http_dify_sentinel_t *st,
    ngx_http_dify_redis_conn_t *conn)
{
    ngx_msec_int_t  since;

    if (st == NULL || st->exiting || conn != *st->primary) {
        return;
    }

    if (st->ask != NULL || st->cand != NULL || st->retry.timer_set) {
        /* under way, or due */
        return;
    }

    since = (ngx_msec_int_t) (ngx_current_msec - st->round);

    if (since >= 0 && since < NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN) {
        ngx_add_timer(&st->retry, NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN - since);
        return;
    }

    ngx_http_dify_sentinel_lookup(st);
}


/* a round of questions: the Sentinels in turn, until one names a primary */

static void
ngx_http_dify_sentinel_lookup(ngx_http_dify_sentinel_t *st)
{
    if (st->exiting || ngx_exiting || ngx_terminate) {
        return;
    }

    if (st->ask != NULL || st->cand != NULL) {
        return;
    }

    if (st->retry.timer_set) {
        ngx_del_timer(&st->retry);
    }

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TOPOLOGY_REFRESHES);

    st->tried = 0;
    st->unknown = 0;
    st->round = ngx_current_msec;

    ngx_http_dify_sentinel_ask(st);
}


static void
ngx_http_dify_sentinel_ask(ngx_http_dify_sentinel_t *st)
{
    size_t                          argvlen[3];
    ngx_uint_t                      i;
    const char                     *argv[3];
    ngx_http_dify_redis_pt          handler;
    ngx_http_dify_redis_cmd_t      *cmd;
    ngx_http_dify_sentinel_conf_t  *scf;

    scf = st->conf;
    handler = ngx_http_dify_sentinel_master_reply;

    argv[0] = "SENTINEL";
    argvlen[0] = sizeof("SENTINEL") - 1;
    argv[1] = "get-master-addr-by-name";
    argvlen[1] = sizeof("get-master-addr-by-name") - 1;
    argv[2] = (const char *) scf->name.data;
    argvlen[2] = scf->name.len;

    /* at most one question per Sentinel in a round */

    while (st->tried < scf->n) {
        i = (st->first + st->tried) % scf->n;
        st->tried++;

        cmd = ngx_http_dify_redis_conn_send(st->query[i], handler, st,
                                            st->rcf->connect_timeout, 3,
                                            argv, argvlen);
        if (cmd != NULL) {
            st->ask = cmd;
            st->asking = i;
            return;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, st->log, 0,
                       "dify_status sentinel: \"%V\" is down",
                       &scf->query[i].address);
    }

    if (st->unknown) {
        ngx_http_dify_sentinel_failed(st, NGX_HTTP_DIFY_SENTINEL_LOG_UNKNOWN,
                                      "no sentinel knows a master named "
                                      "\"%V\" (%ui of %ui answered so)",
                                      &scf->name, st->unknown, scf->n);

    } else {
        ngx_http_dify_sentinel_failed(st, NGX_HTTP_DIFY_SENTINEL_LOG_DOWN,
                                      "no sentinel answered (of %ui)",
                                      scf->n);
    }
}


static void
ngx_http_dify_sentinel_master_reply(redisReply *reply, void *data)
{
    ngx_http_dify_sentinel_t *st = data;

    int                             rc;
    size_t                          len;
    unsigned                        port;
    const char                     *host;
    ngx_http_dify_redis_conf_t     *q;

    st->ask = NULL;
    q = &st->conf->query[st->asking];

    if (reply == NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, st->log, 0,
                       "dify_status sentinel: no answer from \"%V\"",
                       &q->address);
        ngx_http_dify_sentinel_ask(st);
        return;
    }

    rc = dify_redis_sentinel_master(reply, &host, &len, &port);

    if (rc == 1) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, st->log, 0,
                       "dify_status sentinel: \"%V\" knows no \"%V\"",
                       &q->address, &st->conf->name);
        st->unknown++;
        ngx_http_dify_sentinel_ask(st);
        return;
    }

    if (rc != 0) {
        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, st->log, 0,
                          "redis sentinel \"%V\" answered \"%*s\"",
                          &q->address, (size_t) ngx_min(reply->len, 256),
                          reply->str);

        } else {
            ngx_log_error(NGX_LOG_ERR, st->log, 0,
                          "redis sentinel \"%V\": unexpected reply to "
                          "SENTINEL get-master-addr-by-name (type %d)",
                          &q->address, reply->type);
        }

        ngx_http_dify_sentinel_ask(st);
        return;
    }

    /* the first to ask next time */
    st->first = st->asking;

    if (ngx_http_dify_sentinel_candidate(st, (u_char *) host, len, port, 0)
        != NGX_OK)
    {
        ngx_http_dify_sentinel_schedule(st);
    }
}


/* a "message" on a subscribed connection: "+switch-master" */

static void
ngx_http_dify_sentinel_event(redisReply *reply, void *data)
{
    ngx_http_dify_sentinel_t *st = data;

    size_t       len;
    unsigned     port;
    const char  *host;
    redisReply  *ch, *msg;

    ch = reply->element[1];
    msg = reply->element[2];

    if (st->exiting
        || ch->type != REDIS_REPLY_STRING
        || msg->type != REDIS_REPLY_STRING
        || ch->len != sizeof("+switch-master") - 1
        || ngx_strncmp(ch->str, "+switch-master",
                       sizeof("+switch-master") - 1)
           != 0)
    {
        return;
    }

    if (dify_redis_switch_master(msg->str, msg->len,
                                 (const char *) st->conf->name.data,
                                 st->conf->name.len, &host, &len, &port)
        != 0)
    {
        /* another master of the same Sentinels */
        return;
    }

    /* every Sentinel announces it: acted on once */

    if ((st->node != NULL
         && ngx_http_dify_sentinel_is(st->node, (u_char *) host, len, port))
        || (st->cand != NULL
            && ngx_http_dify_sentinel_is(st->cand, (u_char *) host, len,
                                         port)))
    {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, st->log, 0,
                  "redis sentinel: \"+switch-master %*s\"",
                  (size_t) ngx_min(msg->len, 256), msg->str);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_FAILOVERS);

    if (ngx_http_dify_sentinel_candidate(st, (u_char *) host, len, port, 1)
        != NGX_OK)
    {
        ngx_http_dify_sentinel_schedule(st);
    }
}


/*
 * The primary named, by a Sentinel's answer or its event: a new
 * connection, unless it is the one of now.  An event's address replaces
 * a candidate of an answer's, never the other way round (a Sentinel
 * asked may not have heard of the failover yet).  NGX_ERROR: try again
 * later.
 */

static ngx_int_t
ngx_http_dify_sentinel_candidate(ngx_http_dify_sentinel_t *st, u_char *host,
    size_t len, ngx_uint_t port, ngx_uint_t event)
{
    size_t                          argvlen[1];
    ngx_pool_t                     *pool;
    const char                     *argv[1];
    ngx_http_dify_sentinel_node_t  *node;

    if (st->cand != NULL) {

        if (!event || ngx_http_dify_sentinel_is(st->cand, host, len, port)) {
            /* the candidate's ROLE decides */
            return NGX_OK;
        }

        ngx_http_dify_redis_conn_cancel(st->role);
        st->role = NULL;
        ngx_http_dify_redis_conn_drop(st->cand->conn);
        ngx_http_dify_sentinel_bury(st, st->cand);
        st->cand = NULL;
    }

    if (st->node != NULL && ngx_http_dify_sentinel_is(st->node, host, len,
                                                      port))
    {
        if (ngx_http_dify_redis_conn_is_up(st->node->conn)) {
            st->backoff = NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN;
            st->logged = NGX_HTTP_DIFY_SENTINEL_LOG_NONE;
            return NGX_OK;
        }

        /* still named, and down: reconnecting, or not failed over yet */

        return NGX_ERROR;
    }

    pool = ngx_create_pool(1024, st->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    node = ngx_pcalloc(pool, sizeof(ngx_http_dify_sentinel_node_t));
    if (node == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    node->pool = pool;

    if (ngx_http_dify_sentinel_node_conf(st, node, host, len, port)
        != NGX_OK)
    {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    node->conn = ngx_http_dify_redis_conn_create_pool(pool, st->log,
                                                      &node->conf);
    if (node->conn == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    argv[0] = "ROLE";
    argvlen[0] = sizeof("ROLE") - 1;

    /* queued behind the handshake, which loads the scripts */

    st->role = ngx_http_dify_redis_conn_send(node->conn,
                                             ngx_http_dify_sentinel_role_reply,
                                             st, st->rcf->timeout, 1, argv,
                                             argvlen);
    if (st->role == NULL) {
        ngx_http_dify_redis_conn_close(node->conn);
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, st->log, 0,
                   "dify_status sentinel: trying \"%V\"",
                   &node->conf.address);

    st->cand = node;

    return NGX_OK;
}


/* the data nodes' configuration, with this address */

static ngx_int_t
ngx_http_dify_sentinel_node_conf(ngx_http_dify_sentinel_t *st,
    ngx_http_dify_sentinel_node_t *node, u_char *host, size_t len,
    ngx_uint_t port)
{
    u_char                      *p;
    ngx_url_t                    u;
    ngx_uint_t                   v6;
    const char                  *err;
    dify_redis_addr_t            addr;
    ngx_http_dify_redis_conf_t  *conf;

    conf = &node->conf;
    *conf = *st->rcf;

    conf->resolver = NULL;
    conf->addrs = NULL;
    conf->naddrs = 0;
    conf->is_name = 0;

    v6 = (ngx_strlchr(host, host + len, ':') != NULL);

    /* "host:port", "[v6]:port"; host, NUL-terminated */

    p = ngx_pnalloc(node->pool, len + 1 + len + sizeof("[]:65535") - 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    conf->host.data = p;
    conf->host.len = len;
    p = ngx_cpymem(p, host, len);
    *p++ = '\0';

    conf->address.data = p;
    p = ngx_sprintf(p, v6 ? "[%*s]:%ui" : "%*s:%ui", len, host, port);
    conf->address.len = p - conf->address.data;

    conf->port = (in_port_t) port;

#if (NGX_SSL)
    if (conf->ssl && !st->conf->ssl_name) {
        conf->ssl_name = conf->host;
    }
#endif

    if (dify_redis_parse_addr((const char *) conf->address.data,
                              conf->address.len, &addr, &err)
        != 0
        || addr.type == DIFY_REDIS_ADDR_UNIX)
    {
        ngx_http_dify_sentinel_failed(st, NGX_HTTP_DIFY_SENTINEL_LOG_ADDRESS,
                                      "the sentinels name \"%V\" as the "
                                      "primary: not an address (%s)",
                                      &conf->address,
                                      addr.type == DIFY_REDIS_ADDR_UNIX
                                      ? "a unix socket" : err);
        return NGX_ERROR;
    }

    if (addr.type == DIFY_REDIS_ADDR_NAME) {
        /* announce-hostnames yes */

        if (st->resolver == NULL) {
            ngx_http_dify_sentinel_failed(st,
                                      NGX_HTTP_DIFY_SENTINEL_LOG_ADDRESS,
                                      "the sentinels name \"%V\" as the "
                                      "primary: a host name needs a "
                                      "\"resolver\" at http level",
                                      &conf->address);
            return NGX_ERROR;
        }

        conf->is_name = 1;
        conf->resolver = st->resolver;
        conf->resolver_timeout = st->resolver_timeout;

        return NGX_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = conf->address;
    u.default_port = DIFY_REDIS_DEFAULT_PORT;
    u.no_resolve = 1;

    if (ngx_parse_url(node->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_http_dify_sentinel_failed(st, NGX_HTTP_DIFY_SENTINEL_LOG_ADDRESS,
                                      "the sentinels name \"%V\" as the "
                                      "primary: %s", &conf->address,
                                      u.err ? u.err : "invalid address");
        return NGX_ERROR;
    }

    conf->addrs = u.addrs;
    conf->naddrs = u.naddrs;

    return NGX_OK;
}


static void
ngx_http_dify_sentinel_role_reply(redisReply *reply, void *data)
{
    ngx_http_dify_sentinel_t *st = data;

    ngx_str_t                       role;
    ngx_http_dify_sentinel_node_t  *node, *old;

    node = st->cand;

    st->role = NULL;
    st->cand = NULL;

    if (reply != NULL && dify_redis_role_master(reply)) {
        old = st->node;

        if (old != NULL) {
            ngx_log_error(NGX_LOG_NOTICE, st->log, 0,
                          "redis sentinel \"%V\": the primary is \"%V\" "
                          "(was \"%V\")", &st->conf->name,
                          &node->conf.address, &old->conf.address);

        } else {
            ngx_log_error(NGX_LOG_NOTICE, st->log, 0,
                          "redis sentinel \"%V\": the primary is \"%V\"",
                          &st->conf->name, &node->conf.address);
        }

        /* new commands go to the new primary from now */

        st->node = node;
        *st->primary = node->conn;

        st->backoff = NGX_HTTP_DIFY_SENTINEL_BACKOFF_MIN;
        st->logged = NGX_HTTP_DIFY_SENTINEL_LOG_NONE;

        if (old != NULL) {
            /* its commands in flight take the fallback */
            ngx_http_dify_redis_conn_drop(old->conn);
            ngx_http_dify_sentinel_bury(st, old);
        }

        return;
    }

    ngx_str_set(&role, "no answer");

    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0
        && reply->element[0]->type == REDIS_REPLY_STRING)
    {
        role.data = (u_char *) reply->element[0]->str;
        role.len = ngx_min(reply->element[0]->len, 64);

    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        role.data = (u_char *) reply->str;
        role.len = ngx_min(reply->len, 128);
    }

    /* the next Sentinel first: this one may not know of a failover */
    st->first = (st->first + 1) % st->conf->n;

    ngx_http_dify_sentinel_failed(st, NGX_HTTP_DIFY_SENTINEL_LOG_ROLE,
                                  "the primary named, \"%V\", is not one "
                                  "(ROLE: \"%V\")", &node->conf.address,
                                  &role);

    /* this very connection's handler: freed in the next event */

    ngx_http_dify_redis_conn_drop(node->conn);
    ngx_http_dify_sentinel_bury(st, node);
}


static ngx_uint_t
ngx_http_dify_sentinel_is(ngx_http_dify_sentinel_node_t *node, u_char *host,
    size_t len, ngx_uint_t port)
{
    return node->conf.port == port
           && node->conf.host.len == len
           && ngx_strncasecmp(node->conf.host.data, host, len) == 0;
}


static void
ngx_http_dify_sentinel_bury(ngx_http_dify_sentinel_t *st,
    ngx_http_dify_sentinel_node_t *node)
{
    node->next = st->graves;
    st->graves = node;

    if (!st->exiting && !st->reap.posted) {
        ngx_post_event(&st->reap, &ngx_posted_events);
    }
}


static void
ngx_http_dify_sentinel_reap_handler(ngx_event_t *ev)
{
    ngx_http_dify_sentinel_t       *st;
    ngx_http_dify_sentinel_node_t  *node, *next;

    st = ev->data;

    for (node = st->graves; node != NULL; node = next) {
        next = node->next;
        ngx_destroy_pool(node->pool);
    }

    st->graves = NULL;
}


static void
ngx_http_dify_sentinel_retry_handler(ngx_event_t *ev)
{
    ngx_http_dify_sentinel_lookup(ev->data);
}


/* asked again after a delay that grows while nothing changes */

static void
ngx_http_dify_sentinel_schedule(ngx_http_dify_sentinel_t *st)
{
    if (st->exiting || ngx_exiting || ngx_terminate
        || st->retry.timer_set || st->ask != NULL || st->cand != NULL)
    {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, st->log, 0,
                   "dify_status sentinel: asking again in %M ms",
                   st->backoff);

    ngx_add_timer(&st->retry, st->backoff);

    st->backoff = ngx_min(st->backoff * 2,
                          NGX_HTTP_DIFY_SENTINEL_BACKOFF_MAX);
}


/* logged once per kind of failure, until a primary is found; retried */

static void
ngx_http_dify_sentinel_failed(ngx_http_dify_sentinel_t *st, ngx_uint_t kind,
    const char *fmt, ...)
{
    u_char   *p;
    va_list   args;
    u_char    errstr[NGX_MAX_ERROR_STR];

    va_start(args, fmt);
    p = ngx_vslprintf(errstr, errstr + NGX_MAX_ERROR_STR, fmt, args);
    va_end(args);

    if (st->logged != kind) {
        ngx_log_error(NGX_LOG_ERR, st->log, 0,
                      "redis sentinel \"%V\": %*s, requests take the "
                      "fallback until a primary answers", &st->conf->name,
                      p - errstr, errstr);
        st->logged = kind;

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, st->log, 0,
                       "dify_status sentinel: \"%V\": %*s",
                       &st->conf->name, p - errstr, errstr);
    }

    ngx_http_dify_sentinel_schedule(st);
}
