
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
 *
 * Each command's wait is Redis's delay alone, never the worker's: its
 * deadline is counted from when hiredis wrote it to the socket, on a
 * fresh clock (nginx's cached one still reads the start of the current
 * pass of the event loop, however long that pass has been), and before
 * a deadline is acted on, the replies already in the socket are read
 * (a stalled pass, or the accept mutex, which posts read events after
 * the timers, can leave them there).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/sds.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_REDIS_PORT           6379
#define NGX_HTTP_DIFY_REDIS_TIMEOUT        50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_CONNECT        200      /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_BACKOFF_MIN    50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_BACKOFF_MAX    500      /* in milliseconds */

/* what redisBufferRead() reads at most at a time */
#define NGX_HTTP_DIFY_REDIS_READ_SIZE      (16 * 1024)

/* the kind of failure last logged: each is logged once, not per attempt */
#define NGX_HTTP_DIFY_REDIS_LOG_NONE       0
#define NGX_HTTP_DIFY_REDIS_LOG_NETWORK    1        /* refused, lost, hung */
#define NGX_HTTP_DIFY_REDIS_LOG_HANDSHAKE  2        /* an error reply */


struct ngx_http_dify_redis_cmd_s {
    ngx_http_dify_redis_pt         handler;     /* NULL: cancelled or done */
    void                          *data;
    ngx_queue_t                    queue;       /* queued, then pending */

    /* until written, a backstop: connect_timeout + timeout from queued */
    ngx_event_t                    timer;

    uint64_t                       end;         /* output offset past it */
    ngx_msec_t                     timeout;     /* from written */
    ngx_msec_t                     written;     /* fresh clock, in ms */
    ngx_msec_t                     deadline;    /* fresh clock, in ms */
    uint64_t                       start;       /* written, in us */
    unsigned                       is_written:1;
};


typedef struct {
    ngx_http_dify_redis_conf_t    *conf;
    ngx_log_t                     *log;

    /* NULL while there is no connection, set in connect, cleared in cleanup */
    redisAsyncContext             *ac;

    /* written and not yet called back, oldest first */
    ngx_queue_t                    pending;

    /* given to hiredis, not yet (wholly) written, in order */
    ngx_queue_t                    queued;

    /* bytes given to hiredis on this connection, handshake included */
    uint64_t                       appended;

    /* the command whose deadline is being acted on, NULL once freed */
    ngx_http_dify_redis_cmd_t     *expiring;

    ngx_event_t                    reconnect;
    ngx_event_t                    handshake;   /* connect_timeout */
    ngx_event_t                    drop;        /* posted */

    ngx_msec_t                     backoff;     /* the next reconnect delay */
    ngx_msec_t                     last_reply;  /* fresh clock, in ms */
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
static void ngx_http_dify_redis_written(void);
static ngx_uint_t ngx_http_dify_redis_catch_up(void);
static void ngx_http_dify_redis_hung(ngx_uint_t stuck);
static void ngx_http_dify_redis_free_cmd(ngx_http_dify_redis_cmd_t *cmd);
static void ngx_http_dify_redis_arm(ngx_event_t *ev, ngx_msec_t deadline);

static void ngx_http_dify_redis_read_handler(ngx_event_t *rev);
static void ngx_http_dify_redis_write_handler(ngx_event_t *wev);
static void ngx_http_dify_redis_add_read(void *privdata);
static void ngx_http_dify_redis_del_read(void *privdata);
static void ngx_http_dify_redis_add_write(void *privdata);
static void ngx_http_dify_redis_del_write(void *privdata);
static void ngx_http_dify_redis_cleanup(void *privdata);

static void ngx_http_dify_redis_timeout_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_http_dify_redis_handshake_timeout(ngx_event_t *ev);
static void ngx_http_dify_redis_drop_handler(ngx_event_t *ev);

static ngx_msec_t ngx_http_dify_redis_msec(void);
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
    ngx_queue_init(&rd->queued);

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
 * order, and each is still bounded by connect_timeout + its timeout
 * until written, by its timeout after that.  After a
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
    ngx_msec_t timeout, int argc, const char **argv, const size_t *argvlen)
{
    size_t                      before;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *cmd;

    rd = &ngx_http_dify_redis;

    /* hiredis asserts on an empty command */

    if (argc < 1 || timeout == 0) {
        return NULL;
    }

    if (!ngx_http_dify_redis_is_up() && !ngx_http_dify_redis_connecting()) {
        return NULL;
    }

    cmd = ngx_calloc(sizeof(ngx_http_dify_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    cmd->handler = handler;
    cmd->data = data;
    cmd->timeout = timeout;

    cmd->timer.handler = ngx_http_dify_redis_timeout_handler;
    cmd->timer.data = cmd;
    cmd->timer.log = rd->log;

    ngx_queue_insert_tail(&rd->queued, &cmd->queue);

    before = sdslen(rd->ac->c.obuf);

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

    /* hiredis appends the command to its output buffer, sent later */

    rd->appended += sdslen(rd->ac->c.obuf) - before;
    cmd->end = rd->appended;

    /*
     * A backstop until the command is written, normally in the next
     * pass of the event loop, when the write handler re-arms the timer
     * for the command's own timeout: it fires only when the socket does
     * not take the command (Redis reads nothing, or the connection is
     * not established yet).
     */

    ngx_http_dify_redis_arm(&cmd->timer, ngx_http_dify_redis_msec()
                                         + rd->conf->connect_timeout
                                         + timeout);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: command %p %*s, timeout %M ms",
                   cmd, argvlen[0], argv[0], timeout);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_COMMANDS);

    return cmd;
}


ngx_msec_t
ngx_http_dify_redis_left(ngx_http_dify_redis_cmd_t *cmd)
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
ngx_http_dify_redis_cancel(ngx_http_dify_redis_cmd_t *cmd)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (cmd == NULL || cmd->handler == NULL) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: cancel %p", cmd);

    /* the record stays queued until hiredis calls it back, then is freed */

    cmd->handler = NULL;
    cmd->data = NULL;

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }
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
    rd->appended = 0;

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

    /* the handshake is written before any command queued behind it */
    rd->appended = sdslen(ac->c.obuf);

    /* from now: connect() has just been called */

    ngx_http_dify_redis_arm(&rd->handshake,
                            ngx_http_dify_redis_msec() + rcf->connect_timeout);

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

    rd->last_reply = ngx_http_dify_redis_msec();

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

    void                       *data;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_pt      handler;

    rd = &ngx_http_dify_redis;

    ngx_queue_remove(&cmd->queue);

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    if (reply != NULL) {
        rd->last_reply = ngx_http_dify_redis_msec();
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: reply %p type:%d cancelled:%d",
                   cmd, reply ? reply->type : 0, cmd->handler == NULL);

    if (cmd->handler == NULL || rd->exiting) {
        ngx_http_dify_redis_free_cmd(cmd);
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
    data = cmd->data;

    cmd->handler = NULL;
    cmd->data = NULL;

    handler(reply, data);

    ngx_http_dify_redis_free_cmd(cmd);
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
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    c = wev->data;
    ac = c->data;

    /*
     * The context and c may be freed when this returns: touch neither
     * unless rd->ac still points to it (the cleanup hook clears it, and
     * a new context is only ever made from the reconnect timer).
     */

    redisAsyncHandleWrite(ac);

    if (ngx_http_dify_redis.ac == ac) {
        ngx_http_dify_redis_written();
    }
}


/*
 * After hiredis wrote: the commands now wholly in the socket get their
 * deadline, their timeout from now on a fresh clock.  ngx_add_timer()
 * counts from ngx_current_msec, which may be far behind now: the timer
 * is armed for the difference too, so that it fires at the deadline.
 */

static void
ngx_http_dify_redis_written(void)
{
    uint64_t                    written, usec;
    ngx_msec_t                  now;
    ngx_queue_t                *q;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *cmd;

    rd = &ngx_http_dify_redis;

    written = rd->appended - sdslen(rd->ac->c.obuf);

    now = 0;
    usec = 0;

    while (!ngx_queue_empty(&rd->queued)) {
        q = ngx_queue_head(&rd->queued);
        cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        if (cmd->end > written) {
            break;
        }

        if (usec == 0) {
            now = ngx_http_dify_redis_msec();
            usec = ngx_http_dify_redis_usec();
        }

        ngx_queue_remove(q);
        ngx_queue_insert_tail(&rd->pending, q);

        cmd->is_written = 1;
        cmd->written = now;
        cmd->deadline = now + cmd->timeout;
        cmd->start = usec;

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                       "dify_status redis: written %p", cmd);

        /* a cancelled command keeps no timer */

        if (cmd->handler != NULL) {
            ngx_http_dify_redis_arm(&cmd->timer, cmd->deadline);
        }
    }
}


/*
 * Before a deadline is acted on: what the worker had no time for.  The
 * unwritten commands are written if the socket takes them, and the
 * replies already in the socket are read (hiredis reads 16 KiB at a
 * time: as many times as it takes for what is there now).  Either may
 * call handlers, free any command and free the context: the caller
 * learns what became of its command through rd->expiring.  Returns 1
 * when commands are left unwritten and the socket took none of them.
 */

static ngx_uint_t
ngx_http_dify_redis_catch_up(void)
{
    int                     n;
    size_t                  unsent;
    ngx_uint_t              reads, stuck;
    redisAsyncContext      *ac;
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;
    ac = rd->ac;
    stuck = 0;

    if (ac == NULL || rd->dropping || rd->exiting
        || !(ac->c.flags & REDIS_CONNECTED)
        || (ac->c.flags & (REDIS_DISCONNECTING|REDIS_FREEING)))
    {
        return 0;
    }

    unsent = sdslen(ac->c.obuf);

    if (unsent) {
        redisAsyncHandleWrite(ac);

        if (rd->ac != ac) {
            return 0;
        }

        ngx_http_dify_redis_written();

        stuck = (sdslen(ac->c.obuf) == unsent);
    }

#if (NGX_HAVE_FIONREAD)

    if (ngx_socket_nread(ac->c.fd, &n) == -1 || n <= 0) {
        return stuck;
    }

    for (reads = n / NGX_HTTP_DIFY_REDIS_READ_SIZE + 1; reads; reads--) {

        redisAsyncHandleRead(ac);

        if (rd->ac != ac || rd->dropping) {
            return 0;
        }

        if (ngx_socket_nread(ac->c.fd, &n) == -1 || n <= 0) {
            break;
        }
    }

#else

    /* nothing there: hiredis reads EAGAIN and carries on */

    (void) n;
    (void) reads;

    redisAsyncHandleRead(ac);

    if (rd->ac != ac || rd->dropping) {
        return 0;
    }

#endif

    return stuck;
}


/*
 * A deadline passed with nothing left unread.  Replies come in order:
 * the oldest command written has been waiting since it was written or
 * since the last reply, whichever came later, both on a fresh clock.
 * When that is longer than the timeout, Redis is hung (or the path to
 * it is): drop the connection rather than queue more commands on it.
 * With nothing written, "stuck" says that the socket takes no more.
 */

static void
ngx_http_dify_redis_hung(ngx_uint_t stuck)
{
    ngx_msec_t                  since;
    ngx_queue_t                *q;
    ngx_msec_int_t              waited;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_cmd_t  *first;

    rd = &ngx_http_dify_redis;

    if (!ngx_http_dify_redis_is_up()) {
        return;
    }

    if (!ngx_queue_empty(&rd->pending)) {
        q = ngx_queue_head(&rd->pending);
        first = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        since = first->written;

        if ((ngx_msec_int_t) (rd->last_reply - since) > 0) {
            since = rd->last_reply;
        }

        waited = (ngx_msec_int_t) (ngx_http_dify_redis_msec() - since);

        if (waited < (ngx_msec_int_t) rd->conf->timeout) {
            return;
        }

        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "redis \"%V\" lost: no reply for %M ms, reconnecting",
                      &rd->conf->address, (ngx_msec_t) waited);

    } else if (stuck) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "redis \"%V\" lost: it takes no commands, "
                      "reconnecting", &rd->conf->address);

    } else {
        return;
    }

    rd->logged = NGX_HTTP_DIFY_REDIS_LOG_NETWORK;

    ngx_http_dify_redis_drop();
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
    ngx_http_dify_redis_pt      handler;
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

    if (!ngx_queue_empty(&rd->queued)) {
        ngx_queue_add(&rd->pending, &rd->queued);
        ngx_queue_init(&rd->queued);
    }

    while (!ngx_queue_empty(&rd->pending)) {
        q = ngx_queue_head(&rd->pending);
        cmd = ngx_queue_data(q, ngx_http_dify_redis_cmd_t, queue);

        ngx_queue_remove(q);

        if (cmd->timer.timer_set) {
            ngx_del_timer(&cmd->timer);
        }

        handler = cmd->handler;
        cmd->handler = NULL;

        if (handler != NULL && !rd->exiting) {
            ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);
            handler(NULL, cmd->data);
        }

        ngx_http_dify_redis_free_cmd(cmd);
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


/*
 * A command's deadline.  Called from the timers only, never from inside
 * hiredis: the catch-up may call any handler, this command's included
 * (its reply was there after all), and may free the context.
 */

static void
ngx_http_dify_redis_timeout_handler(ngx_event_t *ev)
{
    void                       *data;
    ngx_uint_t                  stuck;
    ngx_http_dify_redis_t      *rd;
    ngx_http_dify_redis_pt      handler;
    ngx_http_dify_redis_cmd_t  *cmd;

    rd = &ngx_http_dify_redis;
    cmd = ev->data;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: deadline of %p, written: %d",
                   cmd, cmd->is_written);

    rd->expiring = cmd;

    stuck = ngx_http_dify_redis_catch_up();

    if (rd->expiring == NULL) {
        /* called back meanwhile, with its reply or with the connection */
        return;
    }

    rd->expiring = NULL;

    if (cmd->handler == NULL || cmd->timer.timer_set) {
        /* cancelled meanwhile, or written just now: a new deadline */
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, rd->log, 0,
                   "dify_status redis: %p timed out", cmd);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_TIMEOUTS);

    /* the record stays queued until hiredis calls it back, then is freed */

    handler = cmd->handler;
    data = cmd->data;

    cmd->handler = NULL;
    cmd->data = NULL;

    /* a drop is posted: no other handler is called before this one */

    ngx_http_dify_redis_hung(stuck);

    handler(NULL, data);
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

    /* the answers may be in the socket, unread by a stalled worker */

    (void) ngx_http_dify_redis_catch_up();

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


static void
ngx_http_dify_redis_free_cmd(ngx_http_dify_redis_cmd_t *cmd)
{
    ngx_http_dify_redis_t  *rd;

    rd = &ngx_http_dify_redis;

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    if (rd->expiring == cmd) {
        rd->expiring = NULL;
    }

    ngx_free(cmd);
}


/* a timer that fires at deadline, a time of ngx_http_dify_redis_msec() */

static void
ngx_http_dify_redis_arm(ngx_event_t *ev, ngx_msec_t deadline)
{
    ngx_msec_int_t  left;

    /* ngx_add_timer() ignores a change of less than 300 ms */

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

    left = (ngx_msec_int_t) (deadline - ngx_current_msec);

    ngx_add_timer(ev, left > 0 ? (ngx_msec_t) left : 0);
}


/*
 * The clock of ngx_current_msec read afresh, as ngx_time_update() reads
 * it (its ngx_monotonic_time() is static): CLOCK_MONOTONIC on Linux, in
 * milliseconds.  Cheaper than ngx_time_update() on every write, and it
 * leaves nginx's cached time, which every other module reads, alone.
 */

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
