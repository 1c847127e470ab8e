
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The Redis transport.  A connection is an object: its peer, its
 * commands in order (queued, then written and awaiting their replies),
 * its timers, backoff, state and name.  The socket is nginx's own
 * (ngx_event_connect_peer, c->send_chain, c->recv, edge-triggered
 * events); hiredis only formats commands and parses replies, and each
 * reply goes to the oldest command awaiting one.
 *
 * On every new connection the handshake comes first: AUTH, SELECT, the
 * configured init commands, then PING.  The connection counts as up
 * once PING is answered.  A new worker queues its first commands behind
 * the handshake; after a failure, commands are refused at once until
 * the connection is up again, so that an outage costs no timeout per
 * request, and the connection is re-established from a timer with a
 * growing delay.
 *
 * Each command's wait is Redis's delay alone, never the worker's: its
 * deadline is counted from when it was written to the socket, on a
 * fresh clock (nginx's cached one still reads the start of the current
 * pass of the event loop, however long that pass has been), and before
 * a deadline is acted on, the replies already in the socket are read.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_REDIS_BACKOFF_MIN    50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_BACKOFF_MAX    500      /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_READ_SIZE      16384
#define NGX_HTTP_DIFY_REDIS_MAX_UNPARSED   (1024 * 1024)
#define NGX_HTTP_DIFY_REDIS_WRITE_BATCH    64       /* commands a write */
#define NGX_HTTP_DIFY_REDIS_MAX_ADDRS      8        /* of a name */
#define NGX_HTTP_DIFY_REDIS_REFRESH_MIN    1000     /* in milliseconds */

/* the connection's state */
#define NGX_HTTP_DIFY_REDIS_CLOSED         0
#define NGX_HTTP_DIFY_REDIS_CONNECTING     1
#define NGX_HTTP_DIFY_REDIS_HANDSHAKE      2
#define NGX_HTTP_DIFY_REDIS_UP             3
#define NGX_HTTP_DIFY_REDIS_RESOLVING      4
#define NGX_HTTP_DIFY_REDIS_TLS            5        /* TLS handshake */

/* the kind of failure last logged: each is logged once, not per attempt */
#define NGX_HTTP_DIFY_REDIS_LOG_NONE       0
#define NGX_HTTP_DIFY_REDIS_LOG_NETWORK    1        /* refused, lost, hung */
#define NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE  2        /* an error reply */
#define NGX_HTTP_DIFY_REDIS_LOG_RESOLVE    3        /* the name */
#define NGX_HTTP_DIFY_REDIS_LOG_TLS        4        /* handshake, verify */


struct ngx_http_dify_redis_cmd_s {
    ngx_http_dify_redis_pt         handler;     /* NULL: cancelled or done */
    void                          *data;
    ngx_http_dify_redis_conn_t    *conn;
    ngx_queue_t                    queue;       /* queued, then pending */

    /* until written, a backstop: connect_timeout + timeout from queued */
    ngx_event_t                    timer;

    ngx_buf_t                      buf;         /* the formatted command */
    ngx_chain_t                    out;
    char                          *bytes;       /* malloc()ed by hiredis */

    const char                    *name;        /* handshake: for logs */
    ngx_uint_t                     epoch;
    ngx_msec_t                     timeout;     /* from written; 0: none */
    ngx_msec_t                     written;     /* fresh clock, in ms */
    ngx_msec_t                     deadline;    /* fresh clock, in ms */
    uint64_t                       start;       /* written, in us */
    unsigned                       is_written:1;
};


struct ngx_http_dify_redis_conn_s {
    ngx_http_dify_redis_conf_t    *conf;
    ngx_log_t                     *log;         /* the cycle's */

    /*
     * The socket's log: nginx's own messages about it (connect() and
     * recv() failures) stay below "error", as the module logs each
     * failure itself, once
     */
    ngx_log_t                      quiet;

    ngx_peer_connection_t          peer;        /* .connection: NULL */
    redisReader                   *reader;
    ngx_uint_t                     addr;        /* the next to try */

    /* a name's last answer, its own copy */
    ngx_resolver_ctx_t            *resolving;
    ngx_event_t                    refresh;     /* the answer's TTL */
    ngx_uint_t                     naddrs;
    ngx_addr_t                     addrs[NGX_HTTP_DIFY_REDIS_MAX_ADDRS];
    ngx_sockaddr_t                 sockaddrs[NGX_HTTP_DIFY_REDIS_MAX_ADDRS];
    u_char                         names[NGX_HTTP_DIFY_REDIS_MAX_ADDRS]
                                        [NGX_SOCKADDR_STRLEN];

    /* the address of the connection */
    ngx_sockaddr_t                 peer_sockaddr;
    ngx_str_t                      peer_name;
    u_char                         peer_text[NGX_SOCKADDR_STRLEN];

    /* nginx's last message about the socket, for the module's own */
    size_t                         said_len;
    u_char                         said[256];

#if (NGX_SSL)
    ngx_ssl_session_t             *ssl_session; /* reused on reconnect */
#endif

    ngx_queue_t                    queued;      /* not wholly written */
    ngx_queue_t                    pending;     /* written, oldest first */

    ngx_event_t                    reconnect;
    ngx_event_t                    handshake;   /* connect_timeout */

    /* the command whose deadline is being acted on, NULL once freed */
    ngx_http_dify_redis_cmd_t     *expiring;

    /* pub/sub messages ("message" arrays), when subscribed */
    ngx_http_dify_redis_pt         push;
    void                          *push_data;

    ngx_uint_t                     state;
    ngx_uint_t                     logged;      /* _LOG_* */
    ngx_uint_t                     epoch;
    ngx_msec_t                     backoff;     /* the next reconnect delay */
    ngx_msec_t                     last_reply;  /* fresh clock, in ms */

    ngx_int_t                      node;        /* its metrics, or -1 */

    unsigned                       exiting:1;
};


static void ngx_http_dify_redis_connect(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_resolve(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_http_dify_redis_refresh_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_connect_addr(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_connected(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c);
#if (NGX_SSL)
static void ngx_http_dify_redis_ssl_init(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c);
static void ngx_http_dify_redis_ssl_handshaked(ngx_connection_t *c);
static ngx_int_t ngx_http_dify_redis_ssl_verify(
    ngx_http_dify_redis_conn_t *rc, ngx_connection_t *c);
static void ngx_http_dify_redis_ssl_save_session(ngx_connection_t *c);
#endif
static void ngx_http_dify_redis_said(ngx_log_t *log, ngx_uint_t level,
    u_char *buf, size_t len);
static ngx_int_t ngx_http_dify_redis_queue_handshake(
    ngx_http_dify_redis_conn_t *rc);
static ngx_int_t ngx_http_dify_redis_queue_handshake_cmds(
    ngx_http_dify_redis_conn_t *rc);
static ngx_http_dify_redis_cmd_t *ngx_http_dify_redis_cmd_create(
    ngx_http_dify_redis_conn_t *rc, int argc, const char **argv,
    const size_t *argvlen);
static void ngx_http_dify_redis_cmd_free(ngx_http_dify_redis_cmd_t *cmd);
static void ngx_http_dify_redis_handshake_reply(redisReply *reply,
    void *data);
static void ngx_http_dify_redis_read_handler(ngx_event_t *rev);
static void ngx_http_dify_redis_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_http_dify_redis_test_connect(
    ngx_http_dify_redis_conn_t *rc, ngx_connection_t *c);
static ngx_int_t ngx_http_dify_redis_read(ngx_http_dify_redis_conn_t *rc);
static ngx_int_t ngx_http_dify_redis_write(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_dispatch(ngx_http_dify_redis_conn_t *rc,
    redisReply *reply);
static void ngx_http_dify_redis_written(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_post_write(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_failed(ngx_http_dify_redis_conn_t *rc,
    ngx_uint_t kind, ngx_err_t err, const char *fmt, ...);
static void ngx_http_dify_redis_close(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_schedule(ngx_http_dify_redis_conn_t *rc);
static void ngx_http_dify_redis_timeout_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_hung(ngx_http_dify_redis_conn_t *rc,
    ngx_uint_t stuck);
static void ngx_http_dify_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_handshake_timeout(ngx_event_t *ev);
static void ngx_http_dify_redis_arm(ngx_event_t *ev, ngx_msec_t deadline);
static ngx_msec_t ngx_http_dify_redis_msec(void);
static uint64_t ngx_http_dify_redis_usec(void);


ngx_http_dify_redis_conn_t *
ngx_http_dify_redis_conn_create(ngx_cycle_t *cycle,
    ngx_http_dify_redis_conf_t *conf)
{
    return ngx_http_dify_redis_conn_create_pool(cycle->pool, cycle->log,
                                                conf);
}


ngx_http_dify_redis_conn_t *
ngx_http_dify_redis_conn_create_pool(ngx_pool_t *pool, ngx_log_t *log,
    ngx_http_dify_redis_conf_t *conf)
{
    ngx_http_dify_redis_conn_t  *rc;

    rc = ngx_pcalloc(pool, sizeof(ngx_http_dify_redis_conn_t));
    if (rc == NULL) {
        return NULL;
    }

    rc->conf = conf;
    rc->log = log;
    rc->node = conf->control ? -1 : ngx_http_dify_metrics_node(&conf->address);

    /*
     * nginx's own messages about the socket (connect(), recv(), OpenSSL's
     * reasons) are kept, not written: the module logs each failure once,
     * with the last of them
     */

    rc->quiet = *log;
    rc->quiet.log_level = NGX_LOG_INFO;
    rc->quiet.writer = ngx_http_dify_redis_said;
    rc->quiet.wdata = rc;
    rc->quiet.next = NULL;
    rc->quiet.handler = NULL;
    rc->quiet.action = NULL;

    ngx_queue_init(&rc->queued);
    ngx_queue_init(&rc->pending);

    rc->reconnect.handler = ngx_http_dify_redis_reconnect_handler;
    rc->reconnect.data = rc;
    rc->reconnect.log = log;
    rc->reconnect.cancelable = 1;

    rc->handshake.handler = ngx_http_dify_redis_handshake_timeout;
    rc->handshake.data = rc;
    rc->handshake.log = log;
    rc->handshake.cancelable = 1;

    rc->refresh.handler = ngx_http_dify_redis_refresh_handler;
    rc->refresh.data = rc;
    rc->refresh.log = log;
    rc->refresh.cancelable = 1;

    rc->backoff = NGX_HTTP_DIFY_REDIS_BACKOFF_MIN;

    ngx_http_dify_redis_connect(rc);

    return rc;
}


void
ngx_http_dify_redis_conn_close(ngx_http_dify_redis_conn_t *rc)
{
    /* from now on, no handler is called and nothing is reconnected */

    rc->exiting = 1;

    if (rc->reconnect.timer_set) {
        ngx_del_timer(&rc->reconnect);
    }

    if (rc->refresh.timer_set) {
        ngx_del_timer(&rc->refresh);
    }

    ngx_http_dify_redis_close(rc);

#if (NGX_SSL)
    if (rc->ssl_session != NULL) {
        ngx_ssl_free_session(rc->ssl_session);
        rc->ssl_session = NULL;
    }
#endif
}


/*
 * As a failure would, but for good: every command called back with NULL
 * (outside of its handler), then closed as by _close().  The handlers
 * may send commands elsewhere; this connection refuses them.  The
 * caller frees the pool once the current event is over (it may be this
 * connection's own).
 */

void
ngx_http_dify_redis_conn_drop(ngx_http_dify_redis_conn_t *rc)
{
    if (rc->exiting) {
        return;
    }

    if (rc->reconnect.timer_set) {
        ngx_del_timer(&rc->reconnect);
    }

    ngx_http_dify_redis_close(rc);
    ngx_http_dify_redis_conn_close(rc);
}


ngx_uint_t
ngx_http_dify_redis_conn_is_up(ngx_http_dify_redis_conn_t *rc)
{
    return rc->state == NGX_HTTP_DIFY_REDIS_UP;
}


void
ngx_http_dify_redis_conn_set_push(ngx_http_dify_redis_conn_t *rc,
    ngx_http_dify_redis_pt handler, void *data)
{
    rc->push = handler;
    rc->push_data = data;
}


ngx_uint_t
ngx_http_dify_redis_conn_epoch(ngx_http_dify_redis_conn_t *rc)
{
    return rc->epoch;
}


void
ngx_http_dify_redis_conn_bump(ngx_http_dify_redis_conn_t *rc)
{
    rc->epoch++;
}


ngx_uint_t
ngx_http_dify_redis_cmd_epoch(ngx_http_dify_redis_cmd_t *cmd)
{
    return cmd->epoch;
}


ngx_http_dify_redis_cmd_t *
ngx_http_dify_redis_conn_send(ngx_http_dify_redis_conn_t *rc,
    ngx_http_dify_redis_pt handler, void *data, ngx_msec_t timeout,
    int argc, const char **argv, const size_t *argvlen)
{
    ngx_http_dify_redis_cmd_t  *cmd;

    if (argc < 1 || timeout == 0 || rc->exiting) {
        return NULL;
    }

    /*
     * Up, or a handshake under way while nothing has failed since the
     * last success (a new worker: at start, after a reload): commands
     * queue behind the handshake, and each is still bounded by
     * connect_timeout + its timeout until written.
     */

    if (rc->state != NGX_HTTP_DIFY_REDIS_UP
        && (rc->state == NGX_HTTP_DIFY_REDIS_CLOSED
            || rc->logged != NGX_HTTP_DIFY_REDIS_LOG_NONE))
    {
        return NULL;
    }

    cmd = ngx_http_dify_redis_cmd_create(rc, argc, argv, argvlen);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->timeout = timeout;

    ngx_queue_insert_tail(&rc->queued, &cmd->queue);

    /*
     * Written at the end of this pass of the event loop, with every
     * other command of the pass; this timer fires only when the socket
     * does not take the command, and is re-armed once it is written.
     */

    ngx_http_dify_redis_arm(&cmd->timer, ngx_http_dify_redis_msec()
                                         + rc->conf->connect_timeout
                                         + timeout);

    ngx_http_dify_redis_post_write(rc);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: command %p %*s, timeout %M ms",
                   cmd, argvlen[0], argv[0], timeout);

    if (!rc->conf->control) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_COMMANDS);
        ngx_http_dify_metrics_node_inc(rc->node, 1, 0);
    }

    return cmd;
}


ngx_msec_t
ngx_http_dify_redis_conn_left(ngx_http_dify_redis_cmd_t *cmd)
{
    ngx_msec_int_t  left;

    /*
     * Counted to the start of this pass of the event loop (the cached
     * clock), not to now: a reply read in this pass was in the socket
     * when the pass began, unless it came during the pass.
     */

    left = (ngx_msec_int_t) (cmd->deadline - ngx_current_msec);

    if (!cmd->is_written || left <= 0) {
        return 0;
    }

    return ngx_min((ngx_msec_t) left, cmd->timeout);
}


void
ngx_http_dify_redis_conn_cancel(ngx_http_dify_redis_cmd_t *cmd)
{
    if (cmd == NULL || cmd->handler == NULL) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, cmd->conn->log, 0,
                   "dify_status redis: cancel %p", cmd);

    /* the record stays queued until its reply comes, then is freed */

    cmd->handler = NULL;
    cmd->data = NULL;

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }
}


/* a new connection: the name resolved first, when there is a resolver */

static void
ngx_http_dify_redis_connect(ngx_http_dify_redis_conn_t *rc)
{
    /* commands queued from now on belong to this connection */
    rc->epoch++;

    if (rc->conf->resolver != NULL) {
        ngx_http_dify_redis_resolve(rc);
        return;
    }

    ngx_http_dify_redis_connect_addr(rc);
}


/*
 * Asks the resolver, whose cache answers until the name's TTL (or the
 * resolver's valid=) runs out.  Called to connect (state RESOLVING), and
 * when the answer of a connection up expires (state UP).
 */

static void
ngx_http_dify_redis_resolve(ngx_http_dify_redis_conn_t *rc)
{
    ngx_resolver_ctx_t          *ctx;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;

    if (rc->resolving != NULL) {
        return;
    }

    /* NULL: no literal check, the name is known to be one */

    ctx = ngx_resolve_start(conf->resolver, NULL);

    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        if (rc->state != NGX_HTTP_DIFY_REDIS_UP) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_RESOLVE,
                                       0, "unreachable: could not start "
                                       "resolving \"%V\"", &conf->host);

        } else if (!rc->refresh.timer_set) {
            ngx_add_timer(&rc->refresh, NGX_HTTP_DIFY_REDIS_REFRESH_MIN);
        }

        return;
    }

    ctx->name = conf->host;
    ctx->handler = ngx_http_dify_redis_resolved;
    ctx->data = rc;
    ctx->timeout = conf->resolver_timeout;
    ctx->cancelable = 1;

    if (rc->state != NGX_HTTP_DIFY_REDIS_UP) {
        rc->state = NGX_HTTP_DIFY_REDIS_RESOLVING;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: resolving \"%V\"", &conf->host);

    /* the handler may run at once, from the cache */

    rc->resolving = ctx;

    if (ngx_resolve_name(ctx) != NGX_OK) {
        /* ctx freed */
        rc->resolving = NULL;

        if (rc->state != NGX_HTTP_DIFY_REDIS_UP) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_RESOLVE,
                                       0, "unreachable: could not resolve "
                                       "\"%V\"", &conf->host);

        } else if (!rc->refresh.timer_set) {
            ngx_add_timer(&rc->refresh, NGX_HTTP_DIFY_REDIS_REFRESH_MIN);
        }
    }
}


static void
ngx_http_dify_redis_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_dify_redis_conn_t  *rc = ctx->data;

    time_t                       valid;
    ngx_int_t                    state;
    ngx_uint_t                   i, n, moved;
    ngx_msec_t                   refresh;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;
    state = ctx->state;
    valid = ctx->valid;

    rc->resolving = NULL;

    if (state || ctx->naddrs == 0) {
        ngx_resolve_name_done(ctx);

        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_RESOLVE_FAILURES);

        if (rc->state == NGX_HTTP_DIFY_REDIS_UP) {
            /* the connection up carries on; asked again in a while */
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                           "dify_status redis: \"%V\" not resolved: %s",
                           &conf->host, ngx_resolver_strerror(state));

            ngx_add_timer(&rc->refresh, NGX_HTTP_DIFY_REDIS_REFRESH_MIN);
            return;
        }

        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_RESOLVE, 0,
                                   "unreachable: \"%V\" could not be "
                                   "resolved (%i: %s)", &conf->host, state,
                                   ngx_resolver_strerror(state));
        return;
    }

    n = ngx_min(ctx->naddrs, NGX_HTTP_DIFY_REDIS_MAX_ADDRS);

    /* is the address of the connection up among the new ones? */

    moved = (rc->state == NGX_HTTP_DIFY_REDIS_UP);

    for (i = 0; i < n && moved; i++) {
        if (ngx_cmp_sockaddr(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                             rc->peer.sockaddr, rc->peer.socklen, 0)
            == NGX_OK)
        {
            moved = 0;
        }
    }

    for (i = 0; i < n; i++) {
        ngx_memcpy(&rc->sockaddrs[i], ctx->addrs[i].sockaddr,
                   ctx->addrs[i].socklen);
        ngx_inet_set_port(&rc->sockaddrs[i].sockaddr, conf->port);

        rc->addrs[i].sockaddr = &rc->sockaddrs[i].sockaddr;
        rc->addrs[i].socklen = ctx->addrs[i].socklen;
        rc->addrs[i].name.data = rc->names[i];
        rc->addrs[i].name.len = ngx_sock_ntop(rc->addrs[i].sockaddr,
                                              rc->addrs[i].socklen,
                                              rc->names[i],
                                              NGX_SOCKADDR_STRLEN, 1);
    }

    ngx_resolve_name_done(ctx);

    if (rc->state != NGX_HTTP_DIFY_REDIS_UP) {
        /* the address connected to is in rc->peer, a pointer into these */
        rc->naddrs = n;
        rc->addr = 0;
    }

    /* asked again once the answer expires (the resolver's cache too) */

    refresh = NGX_HTTP_DIFY_REDIS_REFRESH_MIN;

    if (valid > ngx_time()) {
        refresh = ngx_max(refresh, (ngx_msec_t) (valid - ngx_time()) * 1000);
    }

    if (rc->refresh.timer_set) {
        ngx_del_timer(&rc->refresh);
    }

    ngx_add_timer(&rc->refresh, refresh);

    if (rc->state == NGX_HTTP_DIFY_REDIS_UP) {

        if (!moved) {
            return;
        }

        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "redis \"%V\" now resolves to %V, reconnecting",
                      &conf->address, &rc->addrs[0].name);

        /* after the close: rc->peer points into the old answer */

        ngx_http_dify_redis_close(rc);

        rc->naddrs = n;
        rc->addr = 0;

        ngx_http_dify_redis_connect(rc);
        return;
    }

    ngx_http_dify_redis_connect_addr(rc);
}


static void
ngx_http_dify_redis_refresh_handler(ngx_event_t *ev)
{
    ngx_http_dify_redis_conn_t  *rc;

    rc = ev->data;

    if (rc->exiting) {
        return;
    }

    if (rc->state != NGX_HTTP_DIFY_REDIS_UP) {
        /*
         * a connection on its way up (or down): look again once it is
         * up, or the name would be followed only when it fails; a new
         * connection's own lookup re-arms the timer anyway
         */
        ngx_add_timer(&rc->refresh, NGX_HTTP_DIFY_REDIS_REFRESH_MIN);
        return;
    }

    ngx_http_dify_redis_resolve(rc);
}


static void
ngx_http_dify_redis_connect_addr(ngx_http_dify_redis_conn_t *rc)
{
    int                          n;
    ngx_int_t                    rv;
    ngx_addr_t                  *addr;
    ngx_connection_t            *c;
    ngx_peer_connection_t       *pc;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;

    if (conf->resolver != NULL) {
        addr = rc->naddrs ? &rc->addrs[rc->addr++ % rc->naddrs] : NULL;

    } else {
        addr = conf->naddrs ? &conf->addrs[rc->addr++ % conf->naddrs] : NULL;
    }

    if (addr == NULL) {
        ngx_http_dify_redis_close(rc);
        ngx_http_dify_redis_schedule(rc);
        return;
    }

    /* a copy: a new answer of the resolver may replace rc->addrs */

    ngx_memcpy(&rc->peer_sockaddr, addr->sockaddr, addr->socklen);
    rc->peer_name.len = ngx_min(addr->name.len, NGX_SOCKADDR_STRLEN);
    rc->peer_name.data = rc->peer_text;
    ngx_memcpy(rc->peer_text, addr->name.data, rc->peer_name.len);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: connecting to \"%V\" at %V",
                   &conf->address, &addr->name);

    pc = &rc->peer;
    ngx_memzero(pc, sizeof(ngx_peer_connection_t));

    rc->said_len = 0;

    pc->sockaddr = &rc->peer_sockaddr.sockaddr;
    pc->socklen = addr->socklen;
    pc->name = &rc->peer_name;
    pc->get = ngx_event_get_peer;
    pc->log = &rc->quiet;
    pc->log_error = NGX_ERROR_INFO;

    rv = ngx_event_connect_peer(pc);

    if (rv == NGX_ERROR || rv == NGX_DECLINED || rv == NGX_BUSY) {
        pc->connection = NULL;
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK,
                                   ngx_socket_errno,
                                   "unreachable: connect() to %V failed",
                                   &rc->peer_name);
        return;
    }

    /* rv == NGX_OK || rv == NGX_AGAIN */

    c = pc->connection;

    c->pool = ngx_create_pool(128, &rc->quiet);
    rc->reader = redisReaderCreate();

    if (c->pool == NULL || rc->reader == NULL) {
        ngx_http_dify_redis_close(rc);
        ngx_http_dify_redis_schedule(rc);
        return;
    }

    /* parsed replies are freed at once: no spare buffer kept */
    rc->reader->maxbuf = NGX_HTTP_DIFY_REDIS_READ_SIZE;

    c->data = rc;
    c->read->handler = ngx_http_dify_redis_read_handler;
    c->write->handler = ngx_http_dify_redis_write_handler;

    /* pipelined small writes: Nagle would hold them back */

    if (addr->sockaddr->sa_family != AF_UNIX) {
        n = 1;

        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, (const void *) &n,
                       sizeof(int))
            == -1)
        {
            ngx_log_error(NGX_LOG_WARN, rc->log, ngx_socket_errno,
                          "dify_status redis: setsockopt(TCP_NODELAY) "
                          "failed");
        }
    }

    rc->state = NGX_HTTP_DIFY_REDIS_CONNECTING;

    if (ngx_http_dify_redis_queue_handshake(rc) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, rc->log, 0,
                      "dify_status redis: could not format the handshake");
        ngx_http_dify_redis_close(rc);
        ngx_http_dify_redis_schedule(rc);
        return;
    }

    /* from now: connect() has just been called */

    ngx_http_dify_redis_arm(&rc->handshake,
                            ngx_http_dify_redis_msec() + conf->connect_timeout);

    if (rv == NGX_OK) {
        /* connected at once (a unix socket) */
        ngx_http_dify_redis_connected(rc, c);
    }
}


/* the socket is connected: TLS first, if configured, then the handshake */

static void
ngx_http_dify_redis_connected(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: connected to \"%V\"",
                   &rc->conf->address);

#if (NGX_SSL)
    if (rc->conf->ssl) {
        ngx_http_dify_redis_ssl_init(rc, c);
        return;
    }
#endif

    rc->state = NGX_HTTP_DIFY_REDIS_HANDSHAKE;

    ngx_http_dify_redis_post_write(rc);
}


#if (NGX_SSL)

static void
ngx_http_dify_redis_ssl_init(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c)
{
    u_char                      *name;
    ngx_int_t                    rv;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;

    if (ngx_ssl_create_connection(conf->ssl_ctx, c,
                                  NGX_SSL_BUFFER|NGX_SSL_CLIENT)
        != NGX_OK)
    {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                                   "unreachable: TLS: could not create "
                                   "the connection");
        return;
    }

    /* SNI: a host name only, not an address (RFC 6066) */

    name = conf->ssl_name.data;

    if (conf->ssl_name.len
        && ngx_inet_addr(name, conf->ssl_name.len) == INADDR_NONE
        && ngx_strlchr(name, name + conf->ssl_name.len, ':') == NULL)
    {
        /* ssl_name is NUL-terminated */

        if (SSL_set_tlsext_host_name(c->ssl->connection, (char *) name)
            == 0)
        {
            ngx_ssl_error(NGX_LOG_ERR, rc->log, 0,
                          "SSL_set_tlsext_host_name(\"%V\") failed",
                          &conf->ssl_name);
        }
    }

    c->ssl->save_session = ngx_http_dify_redis_ssl_save_session;

    if (rc->ssl_session != NULL
        && ngx_ssl_set_session(c, rc->ssl_session) != NGX_OK)
    {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                                   "unreachable: TLS: could not set the "
                                   "session");
        return;
    }

    rc->state = NGX_HTTP_DIFY_REDIS_TLS;

    /* bounded by the connection's handshake timer (connect_timeout) */

    rv = ngx_ssl_handshake(c);

    if (rv == NGX_AGAIN) {
        c->ssl->handler = ngx_http_dify_redis_ssl_handshaked;
        return;
    }

    ngx_http_dify_redis_ssl_handshaked(c);
}


static void
ngx_http_dify_redis_ssl_handshaked(ngx_connection_t *c)
{
    ngx_http_dify_redis_conn_t  *rc;

    rc = c->data;

    if (!c->ssl->handshaked) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TLS_FAILURES);

        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                                   "unreachable: TLS handshake failed: %*s",
                                   rc->said_len, rc->said);
        return;
    }

    if (rc->conf->ssl_verify
        && ngx_http_dify_redis_ssl_verify(rc, c) != NGX_OK)
    {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TLS_FAILURES);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: TLS up, session reused: %d, %s",
                   SSL_session_reused(c->ssl->connection),
                   SSL_get_version(c->ssl->connection));

    c->read->handler = ngx_http_dify_redis_read_handler;
    c->write->handler = ngx_http_dify_redis_write_handler;

    rc->state = NGX_HTTP_DIFY_REDIS_HANDSHAKE;

    c->write->ready = 1;
    ngx_http_dify_redis_post_write(rc);

    /* what came with the handshake (TLS 1.3 tickets) is read at once */

    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


/*
 * Verification does not fail the handshake (nginx's callback accepts
 * every certificate): the chain, then the name, are checked here.
 */

static ngx_int_t
ngx_http_dify_redis_ssl_verify(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c)
{
    X509                        *cert;
    long                         rv;
    ngx_str_t                   *name;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;
    name = &conf->ssl_name;

    rv = SSL_get_verify_result(c->ssl->connection);

    if (rv != X509_V_OK) {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                                   "unreachable: TLS certificate verify "
                                   "error: (%l:%s)", rv,
                                   X509_verify_cert_error_string(rv));
        return NGX_ERROR;
    }

    if (ngx_inet_addr(name->data, name->len) != INADDR_NONE
        || ngx_strlchr(name->data, name->data + name->len, ':') != NULL)
    {
        /* an IP address: the certificate's IP SANs */

        cert = SSL_get_peer_certificate(c->ssl->connection);

        if (cert != NULL
            && X509_check_ip_asc(cert, (const char *) name->data, 0) == 1)
        {
            X509_free(cert);
            return NGX_OK;
        }

        if (cert != NULL) {
            X509_free(cert);
        }

    } else if (ngx_ssl_check_host(c, name) == NGX_OK) {
        return NGX_OK;
    }

    ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                               "unreachable: TLS certificate does not "
                               "match \"%V\"", name);
    return NGX_ERROR;
}


/* the new-session callback: one session kept, for the next connection */

static void
ngx_http_dify_redis_ssl_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t           *session;
    ngx_http_dify_redis_conn_t  *rc;

    rc = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    if (rc->ssl_session != NULL) {
        ngx_ssl_free_session(rc->ssl_session);
    }

    rc->ssl_session = session;
}

#endif


/* the quiet log's writer: keeps the message, without its prefix */

static void
ngx_http_dify_redis_said(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    ngx_http_dify_redis_conn_t *rc = log->wdata;

    u_char  *p, *last;

    last = buf + len;

    /* "2026/01/01 00:00:00 [info] 1#1: *2 message" */

    p = ngx_strlchr(buf, last, ']');

    if (p != NULL) {
        p = ngx_strlchr(p, last, ':');
    }

    if (p == NULL || p + 2 > last) {
        p = buf;

    } else {
        p += 2;

        if (p < last && *p == '*') {
            while (p < last && *p != ' ') {
                p++;
            }

            if (p < last) {
                p++;
            }
        }
    }

    /* no trailing newline: ngx_log_error_core() adds it after writers */

    rc->said_len = ngx_min((size_t) (last - p), sizeof(rc->said));
    ngx_memcpy(rc->said, p, rc->said_len);
}


/*
 * AUTH, SELECT, the init commands and PING, first in the queue, before
 * the commands queued while the name was being resolved
 */

static ngx_int_t
ngx_http_dify_redis_queue_handshake(ngx_http_dify_redis_conn_t *rc)
{
    ngx_queue_t  waiting;

    ngx_queue_init(&waiting);

    if (!ngx_queue_empty(&rc->queued)) {
        ngx_queue_add(&waiting, &rc->queued);
        ngx_queue_init(&rc->queued);
    }

    if (ngx_http_dify_redis_queue_handshake_cmds(rc) != NGX_OK) {
        ngx_queue_add(&rc->queued, &waiting);
        return NGX_ERROR;
    }

    ngx_queue_add(&rc->queued, &waiting);

    return NGX_OK;
}


static ngx_int_t
ngx_http_dify_redis_queue_handshake_cmds(ngx_http_dify_redis_conn_t *rc)
{
    int                          argc;
    u_char                      *p, db[NGX_INT_T_LEN];
    size_t                       argvlen[3];
    ngx_str_t                   *init;
    ngx_uint_t                   i;
    const char                  *argv[3];
    ngx_http_dify_redis_cmd_t   *cmd;
    ngx_http_dify_redis_conf_t  *conf;

    conf = rc->conf;

    if (conf->password.len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = sizeof("AUTH") - 1;

        if (conf->user.len) {
            argv[argc] = (const char *) conf->user.data;
            argvlen[argc++] = conf->user.len;
        }

        argv[argc] = (const char *) conf->password.data;
        argvlen[argc++] = conf->password.len;

        cmd = ngx_http_dify_redis_cmd_create(rc, argc, argv, argvlen);
        if (cmd == NULL) {
            return NGX_ERROR;
        }

        cmd->name = "AUTH";
        ngx_queue_insert_tail(&rc->queued, &cmd->queue);
    }

    if (conf->db) {
        p = ngx_sprintf(db, "%i", conf->db);

        argv[0] = "SELECT";
        argvlen[0] = sizeof("SELECT") - 1;
        argv[1] = (const char *) db;
        argvlen[1] = p - db;

        cmd = ngx_http_dify_redis_cmd_create(rc, 2, argv, argvlen);
        if (cmd == NULL) {
            return NGX_ERROR;
        }

        cmd->name = "SELECT";
        ngx_queue_insert_tail(&rc->queued, &cmd->queue);
    }

    if (conf->init) {
        init = conf->init->elts;

        for (i = 0; i < conf->init->nelts; i++) {
            cmd = ngx_http_dify_redis_cmd_create(rc, 0, NULL, NULL);
            if (cmd == NULL) {
                return NGX_ERROR;
            }

            cmd->bytes = malloc(init[i].len);
            if (cmd->bytes == NULL) {
                ngx_http_dify_redis_cmd_free(cmd);
                return NGX_ERROR;
            }

            ngx_memcpy(cmd->bytes, init[i].data, init[i].len);

            cmd->buf.pos = (u_char *) cmd->bytes;
            cmd->buf.last = cmd->buf.pos + init[i].len;
            cmd->buf.start = cmd->buf.pos;
            cmd->buf.end = cmd->buf.last;

            cmd->name = "init";
            ngx_queue_insert_tail(&rc->queued, &cmd->queue);
        }
    }

    argv[0] = "PING";
    argvlen[0] = sizeof("PING") - 1;

    cmd = ngx_http_dify_redis_cmd_create(rc, 1, argv, argvlen);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->name = "PING";
    ngx_queue_insert_tail(&rc->queued, &cmd->queue);

    return NGX_OK;
}


/*
 * A command record; its handler is the handshake's until the caller
 * sets its own.  argc 0: the caller fills in the bytes.
 */

static ngx_http_dify_redis_cmd_t *
ngx_http_dify_redis_cmd_create(ngx_http_dify_redis_conn_t *rc, int argc,
    const char **argv, const size_t *argvlen)
{
    char                       *bytes;
    size_t                      len;
    ngx_http_dify_redis_cmd_t  *cmd;

    bytes = NULL;
    len = 0;

    if (argc > 0) {
        /* the RESP bytes, formatted without printf: a batch has many */

        bytes = ngx_alloc(dify_redis_format_len(argc, argvlen), rc->log);
        if (bytes == NULL) {
            return NULL;
        }

        len = dify_redis_format(bytes, argc, argv, argvlen);
    }

    cmd = ngx_calloc(sizeof(ngx_http_dify_redis_cmd_t), rc->log);
    if (cmd == NULL) {
        ngx_free(bytes);
        return NULL;
    }

    cmd->handler = ngx_http_dify_redis_handshake_reply;
    cmd->data = rc;
    cmd->conn = rc;
    cmd->epoch = rc->epoch;

    cmd->timer.handler = ngx_http_dify_redis_timeout_handler;
    cmd->timer.data = cmd;
    cmd->timer.log = rc->log;

    cmd->bytes = bytes;
    cmd->buf.start = (u_char *) bytes;
    cmd->buf.pos = (u_char *) bytes;
    cmd->buf.last = (u_char *) bytes + len;
    cmd->buf.end = cmd->buf.last;
    cmd->buf.memory = 1;

    cmd->out.buf = &cmd->buf;
    cmd->out.next = NULL;

    return cmd;
}


static void
ngx_http_dify_redis_cmd_free(ngx_http_dify_redis_cmd_t *cmd)
{
    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    if (cmd->conn->expiring == cmd) {
        cmd->conn->expiring = NULL;
    }

    ngx_free(cmd->bytes);
    ngx_free(cmd);
}


static void
ngx_http_dify_redis_handshake_reply(redisReply *reply, void *data)
{
    ngx_http_dify_redis_conn_t  *rc = data;

    ngx_http_dify_redis_cmd_t   *cmd;

    /* the command is still at the head, removed after this returns */

    cmd = ngx_queue_data(ngx_queue_head(&rc->pending),
                         ngx_http_dify_redis_cmd_t, queue);

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {

        /* an init command's error is for the command layer's next use */

        if (ngx_strcmp(cmd->name, "init") == 0) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                           "dify_status redis: init command failed: %*s",
                           (size_t) reply->len, reply->str);
            return;
        }

        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE, 0,
                                   "unreachable: %s failed: %*s", cmd->name,
                                   (size_t) reply->len, reply->str);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: handshake %s done", cmd->name);

    if (ngx_strcmp(cmd->name, "PING") != 0) {
        return;
    }

    if (rc->handshake.timer_set) {
        ngx_del_timer(&rc->handshake);
    }

    rc->state = NGX_HTTP_DIFY_REDIS_UP;

    if (!rc->conf->control) {
        ngx_http_dify_metrics_redis_up(1);
        ngx_http_dify_metrics_node_inc(rc->node, 0, 1);
    }

    rc->backoff = NGX_HTTP_DIFY_REDIS_BACKOFF_MIN;
    rc->logged = NGX_HTTP_DIFY_REDIS_LOG_NONE;

    ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                  "redis \"%V\" connected", &rc->conf->address);
}


static void
ngx_http_dify_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t            *c;
    ngx_http_dify_redis_conn_t  *rc;

    c = rev->data;
    rc = c->data;

    if (c->close) {
        /*
         * worker_shutdown_timeout: the worker is about to exit.  Its
         * requests are closed by the same timer, some of them after this
         * connection, and cancel their commands then: every command is
         * called back now (with NULL, so that each caller forgets it),
         * not freed behind its caller's back; nothing reconnects, as
         * ngx_exiting is set.
         */
        ngx_http_dify_redis_close(rc);
        return;
    }

    if (rc->state == NGX_HTTP_DIFY_REDIS_CONNECTING) {
        /* an error reported before the write event */
        if (ngx_http_dify_redis_test_connect(rc, c) != NGX_OK) {
            return;
        }
    }

    if (rc->state == NGX_HTTP_DIFY_REDIS_TLS) {
        /* the TLS handshake's handlers took over */
        return;
    }

    if (ngx_http_dify_redis_read(rc) != NGX_OK) {
        return;
    }

    if (rc->peer.connection == c
        && ngx_handle_read_event(c->read, 0) != NGX_OK)
    {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                   "lost: could not add the read event");
    }
}


static void
ngx_http_dify_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t            *c;
    ngx_http_dify_redis_conn_t  *rc;

    c = wev->data;
    rc = c->data;

    if (rc->state == NGX_HTTP_DIFY_REDIS_CONNECTING) {
        if (ngx_http_dify_redis_test_connect(rc, c) != NGX_OK) {
            return;
        }
    }

    if (rc->state == NGX_HTTP_DIFY_REDIS_TLS) {
        /* the TLS handshake's handlers took over */
        return;
    }

    (void) ngx_http_dify_redis_write(rc);
}


static ngx_int_t
ngx_http_dify_redis_test_connect(ngx_http_dify_redis_conn_t *rc,
    ngx_connection_t *c)
{
    int        err;
    socklen_t  len;

#if (NGX_HAVE_KQUEUE)

    if (ngx_event_flags & NGX_USE_KQUEUE_EVENT)  {
        if (c->write->pending_eof || c->read->pending_eof) {
            err = c->write->pending_eof ? c->write->kq_errno
                                        : c->read->kq_errno;
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK,
                                       err, "unreachable: connect() failed");
            return NGX_ERROR;
        }

    } else
#endif
    {
        err = 0;
        len = sizeof(int);

        /*
         * BSDs and Linux return 0 and set a pending error in err
         * Solaris returns -1 and sets errno
         */

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
            == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK,
                                       err, "unreachable: connect() failed");
            return NGX_ERROR;
        }
    }

    if (!c->write->ready) {
        /* the read handler learnt it first: the socket takes bytes */
        c->write->ready = 1;
    }

    ngx_http_dify_redis_connected(rc, c);

    /* TLS may have failed already */

    return rc->peer.connection == c ? NGX_OK : NGX_ERROR;
}


/*
 * Reads until the socket has nothing more, and hands each reply to the
 * oldest command awaiting one.  NGX_ERROR: the connection is closed.
 */

static ngx_int_t
ngx_http_dify_redis_read(ngx_http_dify_redis_conn_t *rc)
{
    void              *reply;
    ssize_t            n;
    ngx_err_t          err;
    ngx_connection_t  *c;
    u_char             buf[NGX_HTTP_DIFY_REDIS_READ_SIZE];

    c = rc->peer.connection;

    while (c->read->ready) {

        n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                       "%s: connection closed",
                                       rc->state == NGX_HTTP_DIFY_REDIS_UP
                                       ? "lost" : "unreachable");
            return NGX_ERROR;
        }

        if (n == NGX_ERROR) {
            err = ngx_socket_errno;
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK,
                                       err, "%s: recv() failed",
                                       rc->state == NGX_HTTP_DIFY_REDIS_UP
                                       ? "lost" : "unreachable");
            return NGX_ERROR;
        }

        if (redisReaderFeed(rc->reader, (const char *) buf, n) != REDIS_OK) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                       "lost: redisReaderFeed() failed");
            return NGX_ERROR;
        }

        for ( ;; ) {
            reply = NULL;

            if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
                ngx_http_dify_redis_failed(rc,
                                           NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                           "lost: protocol error: %s",
                                           rc->reader->errstr);
                return NGX_ERROR;
            }

            if (reply == NULL) {
                break;
            }

            ngx_http_dify_redis_dispatch(rc, reply);

            freeReplyObject(reply);

            /* a handshake reply may have closed the connection */

            if (rc->peer.connection != c) {
                return NGX_ERROR;
            }
        }

        if (rc->reader->len - rc->reader->pos
            > NGX_HTTP_DIFY_REDIS_MAX_UNPARSED)
        {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                       "lost: a reply of more than %uz "
                                       "bytes", (size_t)
                                       NGX_HTTP_DIFY_REDIS_MAX_UNPARSED);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_dify_redis_dispatch(ngx_http_dify_redis_conn_t *rc,
    redisReply *reply)
{
    void                       *data;
    ngx_queue_t                *q;
    ngx_http_dify_redis_pt      handler;
    ngx_http_dify_redis_cmd_t  *cmd;

    /* a subscribed connection: ["message", channel, payload] is pushed */

    if (rc->push != NULL
        && reply->type == REDIS_REPLY_ARRAY
        && reply->elements == 3
        && reply->element[0]->type == REDIS_REPLY_STRING
        && reply->element[0]->len == sizeof("message") - 1
        && ngx_strncmp(reply->element[0]->str, "message",
                       sizeof("message") - 1)
           == 0)
    {
        rc->last_reply = ngx_http_dify_redis_msec();
        rc->push(reply, rc->push_data);
        return;
    }

    if (ngx_queue_empty(&rc->pending)) {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                   "lost: a reply to no command");
        return;
    }

    rc->last_reply = ngx_http_dify_redis_msec();

    q = ngx_queue_head(&rc->pending);
    cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: reply %p type:%d cancelled:%d",
                   cmd, reply->type, cmd->handler == NULL);

    handler = cmd->handler;
    data = cmd->data;

    cmd->handler = NULL;
    cmd->data = NULL;

    if (handler != NULL) {

        if (cmd->timeout && !rc->conf->control) {
            ngx_http_dify_metrics_rtt((ngx_msec_int_t)
                                      (ngx_http_dify_redis_usec()
                                       - cmd->start));
        }

        /*
         * The handler may send new commands, or cancel others; a cancel
         * of this very record from inside it finds the handler cleared.
         * The handshake's handler may close the connection, which frees
         * the record.
         */

        handler(reply, data);

        if (rc->peer.connection == NULL) {
            return;
        }
    }

    ngx_queue_remove(q);
    ngx_http_dify_redis_cmd_free(cmd);
}


/*
 * Writes the queued commands in batches, until all are written or the
 * socket takes no more.  NGX_ERROR: the connection is closed.
 */

static ngx_int_t
ngx_http_dify_redis_write(ngx_http_dify_redis_conn_t *rc)
{
    ngx_uint_t                  n;
    ngx_queue_t                *q;
    ngx_chain_t                *cl, *head, **last;
    ngx_connection_t           *c;
    ngx_http_dify_redis_cmd_t  *cmd;

    c = rc->peer.connection;

    if (c->write->timedout) {
        c->write->timedout = 0;
    }

    /* c->buffered: bytes TLS holds back, flushed with an empty chain */

    while ((!ngx_queue_empty(&rc->queued) || c->buffered)
           && c->write->ready)
    {
        head = NULL;
        last = &head;
        cmd = NULL;
        n = 0;

        for (q = ngx_queue_head(&rc->queued);
             q != ngx_queue_sentinel(&rc->queued)
             && n < NGX_HTTP_DIFY_REDIS_WRITE_BATCH;
             q = ngx_queue_next(q))
        {
            cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

            cmd->out.next = NULL;
            cmd->buf.flush = 0;

            *last = &cmd->out;
            last = &cmd->out.next;
            n++;
        }

        /* the last of a batch: TLS buffers up to it */

        if (cmd != NULL) {
            cmd->buf.flush = 1;
        }

        cl = c->send_chain(c, head, 0);

        if (cl == NGX_CHAIN_ERROR) {
            ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK,
                                       ngx_socket_errno, "%s: send() failed",
                                       rc->state == NGX_HTTP_DIFY_REDIS_UP
                                       ? "lost" : "unreachable");
            return NGX_ERROR;
        }

        ngx_http_dify_redis_written(rc);

        if (cl != NULL || (head == NULL && c->buffered)) {
            break;
        }
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                   "lost: could not add the write event");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * After a write: the commands now wholly in the socket await their
 * replies, with a deadline of their timeout from now, on a fresh clock.
 */

static void
ngx_http_dify_redis_written(ngx_http_dify_redis_conn_t *rc)
{
    uint64_t                    usec;
    ngx_msec_t                  now;
    ngx_queue_t                *q;
    ngx_http_dify_redis_cmd_t  *cmd;

    now = 0;
    usec = 0;

    while (!ngx_queue_empty(&rc->queued)) {
        q = ngx_queue_head(&rc->queued);
        cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        if (cmd->buf.pos != cmd->buf.last) {
            break;
        }

        if (usec == 0) {
            now = ngx_http_dify_redis_msec();
            usec = ngx_http_dify_redis_usec();
        }

        ngx_queue_remove(q);
        ngx_queue_insert_tail(&rc->pending, q);

        cmd->is_written = 1;
        cmd->written = now;
        cmd->deadline = now + cmd->timeout;
        cmd->start = usec;

        /* the handshake's own timer, and a cancelled command, keep none */

        if (cmd->timer.timer_set) {
            ngx_del_timer(&cmd->timer);
        }

        if (cmd->timeout && cmd->handler != NULL) {
            ngx_http_dify_redis_arm(&cmd->timer, cmd->deadline);
        }
    }
}


static void
ngx_http_dify_redis_post_write(ngx_http_dify_redis_conn_t *rc)
{
    ngx_connection_t  *c;

    c = rc->peer.connection;

    if (c == NULL || rc->state == NGX_HTTP_DIFY_REDIS_CONNECTING
        || rc->state == NGX_HTTP_DIFY_REDIS_RESOLVING
        || rc->state == NGX_HTTP_DIFY_REDIS_TLS)
    {
        return;
    }

    if (c->write->ready && !c->write->posted) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}


/*
 * The connection failed: logged once per kind of failure (then at
 * debug level until the connection is up again), closed, every command
 * called back with NULL, and a reconnection scheduled.
 */

static void
ngx_http_dify_redis_failed(ngx_http_dify_redis_conn_t *rc, ngx_uint_t kind,
    ngx_err_t err, const char *fmt, ...)
{
    u_char   *p, *last;
    va_list   args;
    u_char    errstr[NGX_MAX_ERROR_STR];

    last = errstr + NGX_MAX_ERROR_STR;

    va_start(args, fmt);
    p = ngx_vslprintf(errstr, last, fmt, args);
    va_end(args);

    if (err) {
        p = ngx_log_errno(p, last, err);
    }

    /* over TLS, OpenSSL's reason, as nginx logged it */

    if (rc->conf->ssl && kind == NGX_HTTP_DIFY_REDIS_LOG_NETWORK
        && rc->said_len && rc->state != NGX_HTTP_DIFY_REDIS_TLS)
    {
        p = ngx_slprintf(p, last, ", %*s", rc->said_len, rc->said);
    }

    if (rc->exiting) {
        ngx_http_dify_redis_close(rc);
        return;
    }

    if (rc->logged != kind || rc->state == NGX_HTTP_DIFY_REDIS_UP) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0, "redis \"%V\" %*s",
                      &rc->conf->address, p - errstr, errstr);
        rc->logged = kind;

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                       "dify_status redis: \"%V\" %*s",
                       &rc->conf->address, p - errstr, errstr);
    }

    ngx_http_dify_redis_close(rc);
    ngx_http_dify_redis_schedule(rc);
}


/* closes the socket and calls every command back with NULL */

static void
ngx_http_dify_redis_close(ngx_http_dify_redis_conn_t *rc)
{
    ngx_queue_t                 queue, *q;
    ngx_connection_t           *c;
    ngx_http_dify_redis_pt      handler;
    ngx_http_dify_redis_cmd_t  *cmd;

    c = rc->peer.connection;

    if (c != NULL) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                       "dify_status redis: close fd:%d", c->fd);

#if (NGX_SSL)
        if (c->ssl) {
            /* quiet and synchronous: SSL_free() now */
            c->ssl->no_wait_shutdown = 1;
            c->ssl->no_send_shutdown = 1;

            (void) ngx_ssl_shutdown(c);
        }
#endif

        if (c->pool) {
            ngx_destroy_pool(c->pool);
            c->pool = NULL;
        }

        ngx_close_connection(c);
        rc->peer.connection = NULL;
    }

    if (rc->reader != NULL) {
        redisReaderFree(rc->reader);
        rc->reader = NULL;
    }

    if (rc->handshake.timer_set) {
        ngx_del_timer(&rc->handshake);
    }

    if (rc->resolving != NULL) {
        ngx_resolve_name_done(rc->resolving);
        rc->resolving = NULL;
    }

    if (rc->state == NGX_HTTP_DIFY_REDIS_UP && !rc->conf->control) {
        ngx_http_dify_metrics_redis_up(-1);
        ngx_http_dify_metrics_node_inc(rc->node, 0, -1);
    }

    rc->state = NGX_HTTP_DIFY_REDIS_CLOSED;

    /*
     * The commands are taken off the connection first: a handler may
     * send a new command, which is refused now that the state is
     * closed, or cancel another one.
     */

    ngx_queue_init(&queue);

    if (!ngx_queue_empty(&rc->pending)) {
        ngx_queue_add(&queue, &rc->pending);
        ngx_queue_init(&rc->pending);
    }

    if (!ngx_queue_empty(&rc->queued)) {
        ngx_queue_add(&queue, &rc->queued);
        ngx_queue_init(&rc->queued);
    }

    while (!ngx_queue_empty(&queue)) {
        q = ngx_queue_head(&queue);
        cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        ngx_queue_remove(q);

        if (cmd->timer.timer_set) {
            ngx_del_timer(&cmd->timer);
        }

        handler = cmd->handler;
        cmd->handler = NULL;

        if (handler != NULL && cmd->timeout && !rc->exiting) {
            if (!rc->conf->control) {
                ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);
            }

            handler(NULL, cmd->data);
        }

        ngx_http_dify_redis_cmd_free(cmd);
    }
}


static void
ngx_http_dify_redis_schedule(ngx_http_dify_redis_conn_t *rc)
{
    if (rc->exiting || ngx_exiting || ngx_terminate
        || rc->reconnect.timer_set)
    {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: reconnect in %M ms", rc->backoff);

    ngx_add_timer(&rc->reconnect, rc->backoff);

    rc->backoff = ngx_min(rc->backoff * 2, NGX_HTTP_DIFY_REDIS_BACKOFF_MAX);
}


/*
 * A command's deadline.  Called from the timers only: the catch-up may
 * call any handler, this command's included (its reply was there after
 * all), and may close the connection.
 */

static void
ngx_http_dify_redis_timeout_handler(ngx_event_t *ev)
{
    void                        *data;
    ngx_uint_t                   stuck;
    ngx_connection_t            *c;
    ngx_http_dify_redis_pt       handler;
    ngx_http_dify_redis_cmd_t   *cmd;
    ngx_http_dify_redis_conn_t  *rc;

    cmd = ev->data;
    rc = cmd->conn;
    c = rc->peer.connection;

    ev->timedout = 0;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: deadline of %p, written: %d",
                   cmd, cmd->is_written);

    /* what the worker had no time for: writes first, then replies */

    rc->expiring = cmd;
    stuck = 0;

    if (c != NULL
        && (rc->state == NGX_HTTP_DIFY_REDIS_HANDSHAKE
            || rc->state == NGX_HTTP_DIFY_REDIS_UP))
    {

        if (!ngx_queue_empty(&rc->queued) || c->buffered) {
            if (c->write->ready) {
                if (ngx_http_dify_redis_write(rc) != NGX_OK) {
                    goto done;
                }
            }

            stuck = !ngx_queue_empty(&rc->queued) && !c->write->ready;
        }

        /* whatever epoll has not reported yet: one recv() at least */

        c->read->ready = 1;
        c->read->available = -1;

        if (ngx_http_dify_redis_read(rc) != NGX_OK) {
            goto done;
        }
    }

done:

    if (rc->expiring == NULL) {
        /* called back meanwhile, with its reply or with the connection */
        return;
    }

    rc->expiring = NULL;

    if (cmd->handler == NULL || cmd->timer.timer_set) {
        /* cancelled meanwhile, or written just now: a new deadline */
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rc->log, 0,
                   "dify_status redis: %p timed out", cmd);

    if (!rc->conf->control) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TIMEOUTS);
    }

    handler = cmd->handler;
    data = cmd->data;

    cmd->handler = NULL;
    cmd->data = NULL;

    if (!cmd->is_written && cmd->buf.pos == cmd->buf.start) {
        /* not a byte of it written: it is simply dropped */
        ngx_queue_remove(&cmd->queue);
        ngx_http_dify_redis_cmd_free(cmd);
    }

    /* otherwise the record stays queued until its reply comes */

    handler(NULL, data);

    ngx_http_dify_redis_hung(rc, stuck);
}


/*
 * A deadline passed with nothing left unread.  Replies come in order:
 * the oldest command written has been waiting since it was written or
 * since the last reply, whichever came later, both on a fresh clock.
 * When that is longer than the timeout, Redis is hung (or the path to
 * it is): the connection is dropped rather than queue more commands on
 * it.  With nothing written, "stuck" says that the socket takes no more.
 */

static void
ngx_http_dify_redis_hung(ngx_http_dify_redis_conn_t *rc, ngx_uint_t stuck)
{
    ngx_msec_t                  since;
    ngx_msec_int_t              waited;
    ngx_queue_t                *q;
    ngx_http_dify_redis_cmd_t  *first;

    if (rc->state != NGX_HTTP_DIFY_REDIS_UP || rc->exiting) {
        return;
    }

    if (!ngx_queue_empty(&rc->pending)) {
        q = ngx_queue_head(&rc->pending);
        first = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        since = first->written;

        if ((ngx_msec_int_t) (rc->last_reply - since) > 0) {
            since = rc->last_reply;
        }

        waited = (ngx_msec_int_t) (ngx_http_dify_redis_msec() - since);

        if (waited < (ngx_msec_int_t) rc->conf->timeout) {
            return;
        }

        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                   "lost: no reply for %M ms, reconnecting",
                                   (ngx_msec_t) waited);
        return;
    }

    if (stuck) {
        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                                   "lost: it takes no commands, "
                                   "reconnecting");
    }
}


static void
ngx_http_dify_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_dify_redis_conn_t  *rc;

    rc = ev->data;

    if (rc->exiting || ngx_exiting || ngx_terminate
        || rc->state != NGX_HTTP_DIFY_REDIS_CLOSED)
    {
        return;
    }

    if (!rc->conf->control) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_RECONNECTS);
    }

    ngx_http_dify_redis_connect(rc);
}


static void
ngx_http_dify_redis_handshake_timeout(ngx_event_t *ev)
{
    ngx_http_dify_redis_conn_t  *rc;

    rc = ev->data;

    if (rc->peer.connection == NULL || rc->state == NGX_HTTP_DIFY_REDIS_UP) {
        return;
    }

    /* a Redis that accepts connections but does not answer, or no SYN-ACK */

    if (rc->state == NGX_HTTP_DIFY_REDIS_TLS) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TLS_FAILURES);

        ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_TLS, 0,
                                   "unreachable: TLS handshake: no answer "
                                   "in %M ms", rc->conf->connect_timeout);
        return;
    }

    ngx_http_dify_redis_failed(rc, NGX_HTTP_DIFY_REDIS_LOG_NETWORK, 0,
                               "unreachable: no answer in %M ms",
                               rc->conf->connect_timeout);
}


/* arms a timer for a deadline on the fresh clock */

static void
ngx_http_dify_redis_arm(ngx_event_t *ev, ngx_msec_t deadline)
{
    ngx_msec_int_t  left;

    /*
     * ngx_add_timer() counts from ngx_current_msec, which may be far
     * behind the fresh clock: the difference is added
     */

    left = (ngx_msec_int_t) (deadline - ngx_current_msec);

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    ngx_add_timer(ev, left > 0 ? (ngx_msec_t) left : 0);
}


/* the clock of ngx_current_msec, read now */

static ngx_msec_t
ngx_http_dify_redis_msec(void)
{
#if (NGX_HAVE_CLOCK_MONOTONIC)

    struct timespec  ts;

#if defined(CLOCK_MONOTONIC_FAST)
    (void) clock_gettime(CLOCK_MONOTONIC_FAST, &ts);
#else
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
#endif

    return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

#else

    struct timeval  tv;

    ngx_gettimeofday(&tv);

    return (ngx_msec_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;

#endif
}


static uint64_t
ngx_http_dify_redis_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}
