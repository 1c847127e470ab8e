
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The Redis connection: one per worker, opened in init_process, driven
 * by the worker's event loop through hiredis's asynchronous API, and
 * shared by all requests, whose commands hiredis pipelines and answers
 * in order.  A connection counts as up once its handshake (AUTH,
 * SELECT, PING) has been answered; while it is down, commands are
 * refused at once and the connection is re-established from a timer
 * with a growing delay.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_REDIS_PORT           6379
#define NGX_HTTP_DIFY_REDIS_TIMEOUT        50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_CONNECT        200      /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_BACKOFF_MIN    50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_BACKOFF_MAX    500      /* in milliseconds */

/* the kind of failure last logged: each is logged once, not per attempt */
#define NGX_HTTP_DIFY_REDIS_LOG_NONE       0
#define NGX_HTTP_DIFY_REDIS_LOG_NETWORK    1        /* refused, lost, hung */
#define NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE  2        /* an error reply */


struct ngx_http_dify_redis_cmd_s {
    ngx_http_dify_redis_pt         handler;     /* NULL: cancelled or done */
    void                          *data;
    ngx_queue_t                    queue;
    ngx_msec_t                     sent;        /* ngx_current_msec */
    uint64_t                       start;       /* in microseconds */
};


typedef struct {
    ngx_http_dify_redis_conf_t    *conf;
    ngx_log_t                     *log;

    /* NULL while there is no connection, set in connect, cleared in cleanup */
    redisAsyncContext             *ac;

    /* sent and not yet called back, oldest first */
    ngx_queue_t                    pending;

    ngx_event_t                    reconnect;
    ngx_event_t                    handshake;   /* connect_timeout */
    ngx_event_t                    drop;        /* posted */

    ngx_msec_t                     backoff;     /* the next reconnect delay */
    ngx_msec_t                     last_reply;  /* ngx_current_msec */
    ngx_uint_t                     logged;      /* _LOG_* */

    unsigned                       configured:1;
    unsigned                       connected:1; /* handshake answered */
    unsigned                       dropping:1;  /* free requested, logged */
    unsigned                       exiting:1;
} ngx_http_dify_redis_t;


static ngx_uint_t ngx_http_dify_redis_connecting(void);
static void ngx_http_dify_redis_connect(void);
static void ngx_http_dify_redis_connect_handler(const redisAsyncContext *ac,
    int status);
static void ngx_http_dify_redis_handshake_handler(redisAsyncContext *ac,
    void *r, void *privdata);
static void ngx_http_dify_redis_reply_handler(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_http_dify_redis_drop(void);
static void ngx_http_dify_redis_schedule(void);

static void ngx_http_dify_redis_read_handler(ngx_event_t *rev);
static void ngx_http_dify_redis_write_handler(ngx_event_t *wev);
static void ngx_http_dify_redis_add_read(void *privdata);
static void ngx_http_dify_redis_del_read(void *privdata);
static void ngx_http_dify_redis_add_write(void *privdata);
static void ngx_http_dify_redis_del_write(void *privdata);
static void ngx_http_dify_redis_cleanup(void *privdata);

static void ngx_http_dify_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_handshake_timeout(ngx_event_t *ev);
static void ngx_http_dify_redis_drop_handler(ngx_event_t *ev);

static uint64_t ngx_http_dify_redis_usec(void);
static ngx_int_t ngx_http_dify_redis_copy(ngx_conf_t *cf, ngx_str_t *dst,
    u_char *src, size_t len);


/*
 * Per-worker state: zeroed and filled in init_process, torn down in
 * exit_process.  A worker is a process of its own and serves a single
 * cycle, so nothing here outlives the configuration it points to.
 */
static ngx_http_dify_redis_t  ngx_http_dify_redis;


ngx_int_t
ngx_http_dify_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_dify_redis_conf_t *rcf)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (rcf == NULL) {
        return NGX_OK;
    }

    /* the cache manager and loader run init_process too */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    ngx_memzero(rd, sizeof(ngx_http_dify_redis_t));

    rd->conf = rcf;
    rd->log = cycle->log;

    ngx_queue_init(&rd->pending);

    rd->reconnect.handler = ngx_http_dify_redis_reconnect_handler;
    rd->reconnect.data = rd;
    rd->reconnect.log = cycle->log;
    rd->reconnect.cancelable = 1;

    rd->handshake.handler = ngx_http_dify_redis_handshake_timeout;
    rd->handshake.data = rd;
    rd->handshake.log = cycle->log;
    rd->handshake.cancelable = 1;

    rd->drop.handler = ngx_http_dify_redis_drop_handler;
    rd->drop.data = rd;
    rd->drop.log = cycle->log;

    rd->backoff = NGX_HTTP_DIFY_REDIS_BACKOFF_MIN;
    rd->configured = 1;

    ngx_http_dify_redis_connect();

    return NGX_OK;
}


void
ngx_http_dify_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (!rd->configured) {
        return;
    }

    /* from now on, callbacks free their records and call no handler */
    rd->exiting = 1;

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    if (rd->handshake.timer_set) {
        ngx_del_timer(&rd->handshake);
    }

    if (rd->drop.posted) {
        ngx_delete_posted_event(&rd->drop);
    }

    if (rd->ac != NULL) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, cycle->log, 0,
                       "dify_status redis: closing on exit");

        /*
         * not called from a hiredis callback, so the context is freed
         * now: the pending callbacks run with a NULL reply, then the
         * cleanup hook releases the nginx connection, then hiredis
         * closes the socket
         */

        redisAsyncFree(rd->ac);
    }

    rd->configured = 0;
}


ngx_uint_t
ngx_http_dify_redis_is_up(void)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (!rd->connected || rd->dropping || rd->exiting || rd->ac == NULL) {
        return 0;
    }

    /* set while hiredis runs the pending callbacks of a lost connection */

    if (rd->ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)) {
        return 0;
    }

    return 1;
}


/*
 * A connection whose handshake is under way, opened when nothing has
 * failed since the last success (a new worker: at start, after a
 * reload): commands queue behind the handshake, hiredis keeps them in
 * order, and each request's own timer still bounds its wait.  After a
 * failure (Redis lost, refused, hung, a handshake error) commands are
 * refused until the handshake is answered, so that an outage costs no
 * timeout per request.
 */

static ngx_uint_t
ngx_http_dify_redis_connecting(void)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (rd->ac == NULL || rd->connected || rd->dropping || rd->exiting
        || rd->logged != NGX_HTTP_DIFY_REDIS_LOG_NONE)
    {
        return 0;
    }

    if (rd->ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)) {
        return 0;
    }

    return 1;
}


ngx_http_dify_redis_cmd_t *
ngx_http_dify_redis_command(ngx_http_dify_redis_pt handler, void *data,
    int argc, const char **argv, const size_t *argvlen)
{
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *cmd;

    rd = &ngx_http_dify_redis;

    /* hiredis asserts on an empty command */

    if (argc < 1) {
        return NULL;
    }

    if (!ngx_http_dify_redis_is_up() && !ngx_http_dify_redis_connecting()) {
        return NULL;
    }

    cmd = ngx_alloc(sizeof(ngx_http_dify_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->sent = ngx_current_msec;
    cmd->start = ngx_http_dify_redis_usec();

    ngx_queue_insert_tail(&rd->pending, &cmd->queue);

    if (redisAsyncCommandArgv(rd->ac, ngx_http_dify_redis_reply_handler, cmd,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "redisAsyncCommandArgv() failed");

        ngx_queue_remove(&cmd->queue);
        ngx_free(cmd);
        return NULL;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: command %p %*s",
                   cmd, argvlen[0], argv[0]);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_COMMANDS);

    return cmd;
}


void
ngx_http_dify_redis_cancel(ngx_http_dify_redis_cmd_t *cmd,
    ngx_uint_t timed_out)
{
    ngx_msec_t                  since;
    ngx_msec_int_t              waited;
    ngx_queue_t                *q;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *first;

    rd = &ngx_http_dify_redis;

    if (cmd == NULL || cmd->handler == NULL) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: cancel %p, timed out: %ui",
                   cmd, timed_out);

    /* the record stays queued until hiredis calls it back, then is freed */

    cmd->handler = NULL;
    cmd->data = NULL;

    if (!timed_out) {
        return;
    }

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TIMEOUTS);

    if (!ngx_http_dify_redis_is_up() || ngx_queue_empty(&rd->pending)) {
        return;
    }

    /*
     * Replies come in order: the oldest command has been waiting since
     * it was sent or since the last reply, whichever came later.  When
     * that is longer than the timeout, Redis is hung (or the path to it
     * is): drop the connection rather than queue more commands on it.
     */

    q = ngx_queue_head(&rd->pending);
    first = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

    since = first->sent;

    if ((ngx_msec_int_t) (rd->last_reply - since) > 0) {
        since = rd->last_reply;
    }

    waited = (ngx_msec_int_t) (ngx_current_msec - since);

    if (waited < (ngx_msec_int_t) rd->conf->timeout) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "redis \"%V\" lost: no reply for %M ms, reconnecting",
                  &rd->conf->address, (ngx_msec_t) waited);

    rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

    ngx_http_dify_redis_drop();
}


static void
ngx_http_dify_redis_connect(void)
{
    int                          argc;
    u_char                      *p, db[NGX_INT_T_LEN];
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_connection_t            *c;
    redisAsyncContext           *ac;
    ngx_http_dify_redis_t       *rd;
    ngx_http_dify_redis_conf_t  *rcf;

    rd = &ngx_http_dify_redis;
    rcf = rd->conf;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: connecting to \"%V\"", &rcf->address);

    /* an IP address or a path: no name lookup, so no blocking call */

    if (rcf->unix_path.len) {
        ac = redisAsyncConnectUnix((const char *) rcf->unix_path.data);

    } else {
        ac = redisAsyncConnect((const char *) rcf->host.data,
                               (int) rcf->port);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                      "redisAsyncConnect() failed");
        ngx_http_dify_redis_schedule();
        return;
    }

    if (ac->err) {
        if (rd->logged != NGX_HTTP_DIFY_REDIS_LOG_NETWORK) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "redis \"%V\" unreachable: %s",
                          &rcf->address, ac->errstr);
            rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

        } else {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                           "dify_status redis: connect failed: %s",
                           ac->errstr);
        }

        /* no hooks yet: hiredis closes the socket, if any, and frees */
        redisAsyncFree(ac);

        ngx_http_dify_redis_schedule();
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_dify_redis_schedule();
        return;
    }

    c->data = ac;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    c->read->handler = ngx_http_dify_redis_read_handler;
    c->write->handler = ngx_http_dify_redis_write_handler;
    c->read->log = c->log;
    c->write->log = c->log;

    rd->ac = ac;
    rd->connected = 0;
    rd->dropping = 0;

    /* hiredis calls the hooks from now on, the cleanup hook included */

    ac->ev.data = c;
    ac->ev.addRead = ngx_http_dify_redis_add_read;
    ac->ev.delRead = ngx_http_dify_redis_del_read;
    ac->ev.addWrite = ngx_http_dify_redis_add_write;
    ac->ev.delWrite = ngx_http_dify_redis_del_write;
    ac->ev.cleanup = ngx_http_dify_redis_cleanup;

    /* waits for the socket to become writable, that is connected */
    (void) redisAsyncSetConnectCallback(ac,
                                        ngx_http_dify_redis_connect_handler);

    /*
     * queued now, sent once connected; the privdata of each is its
     * name, a string literal, and PING is always the last
     */

    if (rcf->password.len) {
        argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = sizeof("AUTH") - 1;

        if (rcf->user.len) {
            argv[argc] = (const char *) rcf->user.data;
            argvlen[argc++] = rcf->user.len;
        }

        argv[argc] = (const char *) rcf->password.data;
        argvlen[argc++] = rcf->password.len;

        if (redisAsyncCommandArgv(ac, ngx_http_dify_redis_handshake_handler,
                                  (void *) argv[0], argc, argv, argvlen)
            != REDIS_OK)
        {
            goto failed;
        }
    }

    if (rcf->db) {
        p = ngx_sprintf(db, "%i", rcf->db);

        argv[0] = "SELECT";
        argvlen[0] = sizeof("SELECT") - 1;
        argv[1] = (const char *) db;
        argvlen[1] = p - db;

        if (redisAsyncCommandArgv(ac, ngx_http_dify_redis_handshake_handler,
                                  (void *) argv[0], 2, argv, argvlen)
            != REDIS_OK)
        {
            goto failed;
        }
    }

    argv[0] = "PING";
    argvlen[0] = sizeof("PING") - 1;

    if (redisAsyncCommandArgv(ac, ngx_http_dify_redis_handshake_handler,
                              (void *) argv[0], 1, argv, argvlen)
        != REDIS_OK)
    {
        goto failed;
    }

    ngx_add_timer(&rd->handshake, rcf->connect_timeout);

    return;

failed:

    ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                  "redisAsyncCommandArgv() failed");

    rd->dropping = 1;

    /* not in a callback: freed now, and the cleanup hook reschedules */
    redisAsyncFree(ac);
}


static void
ngx_http_dify_redis_connect_handler(const redisAsyncContext *ac, int status)
{
    /*
     * Called before a failed context is freed by hiredis itself (the
     * cleanup hook follows), so nothing is freed or reconnected here.
     */

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_http_dify_redis.log, 0,
                   "dify_status redis: connect status %d: %s",
                   status, status == REDIS_OK ? "ok" : ac->c.errstr);
}


static void
ngx_http_dify_redis_handshake_handler(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply             *reply = r;
    const char             *name = privdata;

    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    /* NULL: the context is being freed, the cleanup hook follows */

    if (reply == NULL || rd->exiting || rd->dropping || ac != rd->ac) {
        return;
    }

    rd->last_reply = ngx_current_msec;

    if (reply->type == REDIS_REPLY_ERROR) {

        if (rd->logged != NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "redis \"%V\" unreachable: %s failed: %*s",
                          &rd->conf->address, name,
                          (size_t) reply->len, reply->str);
            rd->logged = NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE;
        }

        ngx_http_dify_redis_drop();
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: handshake %s done", name);

    if (ngx_strcmp(name, "PING") != 0) {
        return;
    }

    if (rd->handshake.timer_set) {
        ngx_del_timer(&rd->handshake);
    }

    rd->connected = 1;
    rd->backoff = NGX_HTTP_DIFY_REDIS_BACKOFF_MIN;
    rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NONE;

    ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                  "redis \"%V\" connected", &rd->conf->address);
}


static void
ngx_http_dify_redis_reply_handler(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply                 *reply = r;
    ngx_http_dify_redis_cmd_t  *cmd = privdata;

    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_pt      handler;

    rd = &ngx_http_dify_redis;

    ngx_queue_remove(&cmd->queue);

    if (reply != NULL) {
        rd->last_reply = ngx_current_msec;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: reply %p type:%d cancelled:%d",
                   cmd, reply ? reply->type : 0, cmd->handler == NULL);

    if (cmd->handler == NULL || rd->exiting) {
        ngx_free(cmd);
        return;
    }

    if (reply != NULL) {
        ngx_http_dify_metrics_rtt((ngx_msec_int_t)
                                  (ngx_http_dify_redis_usec() - cmd->start));
    }

    /* error replies are counted by the caller, which knows NOSCRIPT */

    if (reply == NULL) {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);
    }

    /*
     * The handler may send new commands, or cancel others; a cancel of
     * this very record from inside it finds the handler cleared.
     */

    handler = cmd->handler;
    cmd->handler = NULL;

    handler(reply, cmd->data);

    ngx_free(cmd);
}


static void
ngx_http_dify_redis_drop(void)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    /*
     * The reason has been logged by the caller.  The context is freed
     * from a posted event, never from a hiredis callback or an event
     * hook (hiredis would still use it afterwards), nor from inside a
     * request's timer handler, which would see other requests' handlers
     * called with NULL before it returns.
     */

    rd->dropping = 1;

    if (!rd->drop.posted) {
        ngx_post_event(&rd->drop, &ngx_posted_events);
    }
}


static void
ngx_http_dify_redis_schedule(void)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (rd->exiting || rd->reconnect.timer_set) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: reconnect in %M ms", rd->backoff);

    ngx_add_timer(&rd->reconnect, rd->backoff);

    rd->backoff = ngx_min(rd->backoff * 2, NGX_HTTP_DIFY_REDIS_BACKOFF_MAX);
}


static void
ngx_http_dify_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t  *c;

    c = rev->data;

    /* the context and c may be freed when this returns: touch neither */
    redisAsyncHandleRead(c->data);
}


static void
ngx_http_dify_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t  *c;

    c = wev->data;

    /* the context and c may be freed when this returns: touch neither */
    redisAsyncHandleWrite(c->data);
}


/*
 * The event hooks.  hiredis calls addRead after every read and addWrite
 * after every command, so they must be idempotent.  Events are level-
 * triggered: hiredis reads at most 16 KiB per call, and with edge-
 * triggered epoll the rest of a large pipelined reply would sit unread.
 */

static void
ngx_http_dify_redis_add_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->read->active) {
        return;
    }

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_http_dify_redis_drop();
    }
}


static void
ngx_http_dify_redis_del_read(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (!c->read->active) {
        return;
    }

    if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_http_dify_redis_drop();
    }
}


static void
ngx_http_dify_redis_add_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (c->write->active) {
        return;
    }

    if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        ngx_http_dify_redis_drop();
    }
}


static void
ngx_http_dify_redis_del_write(void *privdata)
{
    ngx_connection_t  *c = privdata;

    if (!c->write->active) {
        return;
    }

    if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
        ngx_http_dify_redis_drop();
    }
}


/*
 * Called by hiredis on every path that frees the context (connect
 * failure, EOF, read or protocol error, redisAsyncFree), after the
 * pending callbacks have run with NULL and before it closes the socket:
 * so the events are deleted and the nginx connection released, but the
 * socket is not closed here.
 */

static void
ngx_http_dify_redis_cleanup(void *privdata)
{
    ngx_connection_t  *c = privdata;

    ngx_uint_t                  connected;
    ngx_queue_t                *q;
    const char                 *reason;
    redisAsyncContext          *ac;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *cmd;

    rd = &ngx_http_dify_redis;
    ac = c->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: cleanup fd:%d", c->fd);

    /* hiredis closes the socket right after this returns */

    if (ngx_del_conn) {
        ngx_del_conn(c, NGX_CLOSE_EVENT);

    } else {
        if (c->read->active || c->read->disabled) {
            ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (c->write->active || c->write->disabled) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    ngx_free_connection(c);

    c->fd = (ngx_socket_t) -1;

    ac->ev.data = NULL;
    ac->ev.addRead = NULL;
    ac->ev.delRead = NULL;
    ac->ev.addWrite = NULL;
    ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;

    connected = rd->connected;

    rd->ac = NULL;
    rd->connected = 0;

    if (rd->handshake.timer_set) {
        ngx_del_timer(&rd->handshake);
    }

    if (rd->drop.posted) {
        ngx_delete_posted_event(&rd->drop);
    }

    /*
     * hiredis has called back every command it accepted; a record left
     * here lost its callback to an allocation failure inside hiredis
     */

    while (!ngx_queue_empty(&rd->pending)) {
        q = ngx_queue_head(&rd->pending);
        cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        ngx_queue_remove(q);

        if (cmd->handler != NULL && !rd->exiting) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);
            cmd->handler(NULL, cmd->data);
        }

        ngx_free(cmd);
    }

    if (rd->exiting) {
        return;
    }

    if (!rd->dropping) {
        reason = ac->c.err ? ac->c.errstr : "connection closed";

        if (connected) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "redis \"%V\" lost: %s",
                          &rd->conf->address, reason);

            rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

        } else if (rd->logged != NGX_HTTP_DIFY_REDIS_LOG_NETWORK) {
            ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                          "redis \"%V\" unreachable: %s",
                          &rd->conf->address, reason);

            rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

        } else {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                           "dify_status redis: closed: %s", reason);
        }
    }

    rd->dropping = 0;

    ngx_http_dify_redis_schedule();
}


static void
ngx_http_dify_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_dify_redis_t  *rd;

    rd = ev->data;

    if (rd->exiting || rd->ac != NULL) {
        return;
    }

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_RECONNECTS);

    ngx_http_dify_redis_connect();
}


static void
ngx_http_dify_redis_handshake_timeout(ngx_event_t *ev)
{
    ngx_http_dify_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL || rd->connected || rd->dropping) {
        return;
    }

    /* a Redis that accepts connections but does not answer, or no SYN-ACK */

    if (rd->logged != NGX_HTTP_DIFY_REDIS_LOG_NETWORK) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "redis \"%V\" unreachable: no answer in %M ms",
                      &rd->conf->address, rd->conf->connect_timeout);

        rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

    } else {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                       "dify_status redis: handshake timed out");
    }

    ngx_http_dify_redis_drop();
}


static void
ngx_http_dify_redis_drop_handler(ngx_event_t *ev)
{
    ngx_http_dify_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: dropping the connection");

    /*
     * A posted event runs outside hiredis, so the context is freed now
     * (were it inside a callback, hiredis would defer it safely): the
     * commands still pending get their handlers called with NULL, and
     * the cleanup hook schedules the reconnection.
     */

    redisAsyncFree(rd->ac);
}


static uint64_t
ngx_http_dify_redis_usec(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


static ngx_int_t
ngx_http_dify_redis_copy(ngx_conf_t *cf, ngx_str_t *dst, u_char *src,
    size_t len)
{
    /* NUL-terminated, for hiredis */

    dst->data = ngx_pnalloc(cf->pool, len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(dst->data, src, len + 1);
    dst->len = len;

    return NGX_OK;
}


/*
 * dify_status_redis address [db=N] [user=name] [password=secret]
 *     [timeout=time] [connect_timeout=time];
 */

char *
ngx_http_dify_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dify_main_conf_t *mcf = conf;

    u_char                      *eq;
    ngx_int_t                    n;
    ngx_str_t                   *value, s, name;
    ngx_url_t                    u;
    ngx_uint_t                   i;
    ngx_http_dify_redis_conf_t  *rcf;

    if (mcf->redis != NULL) {
        return "is duplicate";
    }

    rcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_redis_conf_t));
    if (rcf == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    rcf->address = value[1];
    rcf->db = 0;
    rcf->timeout = NGX_HTTP_DIFY_REDIS_TIMEOUT;
    rcf->connect_timeout = NGX_HTTP_DIFY_REDIS_CONNECT;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = value[1];
    u.default_port = NGX_HTTP_DIFY_REDIS_PORT;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\"", u.err, &u.url);
        }

        return NGX_CONF_ERROR;
    }

    if (u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\": a host name would "
                           "need a blocking lookup in the worker, use an IP "
                           "address or \"unix:/path\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (u.family == AF_UNIX) {
        if (ngx_http_dify_redis_copy(cf, &rcf->unix_path, u.host.data,
                                     u.host.len)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

    } else {
        s = u.host;

        /* "[::1]": hiredis wants the bare address */

        if (s.len > 2 && s.data[0] == '[') {
            s.data++;
            s.len -= 2;
        }

        if (ngx_http_dify_redis_copy(cf, &rcf->host, s.data, s.len)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        rcf->port = u.port;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "db=", 3) == 0) {

            n = ngx_atoi(value[i].data + 3, value[i].len - 3);
            if (n == NGX_ERROR) {
                goto invalid;
            }

            rcf->db = n;

            continue;
        }

        if (ngx_strncmp(value[i].data, "user=", 5) == 0) {

            rcf->user.len = value[i].len - 5;
            rcf->user.data = value[i].data + 5;

            if (rcf->user.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "password=", 9) == 0) {

            rcf->password.len = value[i].len - 9;
            rcf->password.data = value[i].data + 9;

            /* only an empty value is invalid: a secret is never logged */

            if (rcf->password.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {

            s.len = value[i].len - 8;
            s.data = value[i].data + 8;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            rcf->timeout = (ngx_msec_t) n;

            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {

            s.len = value[i].len - 16;
            s.data = value[i].data + 16;

            n = ngx_parse_time(&s, 0);
            if (n == NGX_ERROR || n == 0) {
                goto invalid;
            }

            rcf->connect_timeout = (ngx_msec_t) n;

            continue;
        }

        /*
         * an unknown parameter may be a misspelt "password=": show its
         * name only
         */

        name = value[i];

        eq = ngx_strlchr(name.data, name.data + name.len, '=');
        if (eq != NULL) {
            name.len = eq + 1 - name.data;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    if (rcf->user.len && rcf->password.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"user=\" requires \"password=\"");
        return NGX_CONF_ERROR;
    }

    mcf->redis = rcf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}
