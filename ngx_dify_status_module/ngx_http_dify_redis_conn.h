
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The Redis transport: a connection to one Redis server is an object,
 * opened with nginx's own ngx_event_connect_peer() and driven by the
 * worker's event loop, with hiredis as the RESP codec only.  It knows
 * nothing of the limiter nor of the commands it carries.
 */


#ifndef _NGX_HTTP_DIFY_REDIS_CONN_H_INCLUDED_
#define _NGX_HTTP_DIFY_REDIS_CONN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>


typedef struct ngx_http_dify_redis_conn_s  ngx_http_dify_redis_conn_t;
typedef struct ngx_http_dify_redis_cmd_s   ngx_http_dify_redis_cmd_t;


/*
 * How to reach one Redis server and what to say first on every new
 * connection; made at configuration time, read-only in the workers.
 */
typedef struct {
    ngx_str_t                  address;     /* as written, for logs */
    ngx_str_t                  host;        /* name or address, or empty */
    in_port_t                  port;
    ngx_addr_t                *addrs;       /* resolved, or literal */
    ngx_uint_t                 naddrs;

    /* a host name resolved in the worker before every connection */
    ngx_resolver_t            *resolver;
    ngx_msec_t                 resolver_timeout;
    ngx_flag_t                 is_name;
    ngx_int_t                  db;
    ngx_str_t                  user;
    ngx_str_t                  password;
    ngx_msec_t                 timeout;
    ngx_msec_t                 connect_timeout;

    /* of ngx_str_t: formatted commands sent after AUTH and SELECT */
    ngx_array_t               *init;

    /* a Sentinel's: counted in no data metric (commands, connections) */
    ngx_flag_t                 control;

    ngx_flag_t                 ssl;
#if (NGX_SSL)
    ngx_ssl_t                 *ssl_ctx;
    ngx_flag_t                 ssl_verify;
    ngx_str_t                  ssl_name;    /* verified, and SNI */
#endif
} ngx_http_dify_redis_conf_t;


/*
 * A command's handler is called exactly once for every command that
 * ngx_http_dify_redis_conn_send() accepted, unless the caller cancelled
 * it first or the worker is exiting: with the reply, or with NULL when
 * no reply came within the timeout or the connection went away first.
 * The timeout (in milliseconds) counts from when the command was
 * written to the socket, on a fresh clock, and the replies already in
 * the socket are read before it is taken: Redis's delay alone, however
 * long the worker was busy; until written, a command waits
 * connect_timeout + timeout at most.  The handler is never called from
 * inside _send() or _cancel().  The reply lives only for the call, and
 * so does the command record: the caller forgets it in the handler,
 * which may send new commands.
 */
typedef void (*ngx_http_dify_redis_pt)(redisReply *reply, void *data);


/* allocated from the cycle's pool; connects at once */
ngx_http_dify_redis_conn_t *ngx_http_dify_redis_conn_create(
    ngx_cycle_t *cycle, ngx_http_dify_redis_conf_t *conf);
/* the same, from a pool of the caller's, with its log */
ngx_http_dify_redis_conn_t *ngx_http_dify_redis_conn_create_pool(
    ngx_pool_t *pool, ngx_log_t *log, ngx_http_dify_redis_conf_t *conf);
/* closes the socket, frees every command and calls no handler */
void ngx_http_dify_redis_conn_close(ngx_http_dify_redis_conn_t *rc);
/*
 * Closes the connection for good, calling every command back with NULL
 * first, as a failure does (a primary replaced after a failover).  The
 * caller frees the connection's pool only once the current event is
 * over: this may run in a handler of the connection's own.
 */
void ngx_http_dify_redis_conn_drop(ngx_http_dify_redis_conn_t *rc);
/* 1 once the handshake is done, until the connection fails */
ngx_uint_t ngx_http_dify_redis_conn_is_up(ngx_http_dify_redis_conn_t *rc);
/*
 * Pub/sub: once set, a ["message", channel, payload] reply goes to this
 * handler instead of the oldest command (SUBSCRIBE is one of the init
 * commands, so that every new connection subscribes again)
 */
void ngx_http_dify_redis_conn_set_push(ngx_http_dify_redis_conn_t *rc,
    ngx_http_dify_redis_pt handler, void *data);
/*
 * A number that changes with every new connection and with every
 * ngx_http_dify_redis_conn_bump() (see the command layer's scripts),
 * and the one current when a command was sent.
 */
ngx_uint_t ngx_http_dify_redis_conn_epoch(ngx_http_dify_redis_conn_t *rc);
void ngx_http_dify_redis_conn_bump(ngx_http_dify_redis_conn_t *rc);
ngx_uint_t ngx_http_dify_redis_cmd_epoch(ngx_http_dify_redis_cmd_t *cmd);

/* NULL when the connection is down, or on failure; timeout > 0 */
ngx_http_dify_redis_cmd_t *ngx_http_dify_redis_conn_send(
    ngx_http_dify_redis_conn_t *rc, ngx_http_dify_redis_pt handler,
    void *data, ngx_msec_t timeout, int argc, const char **argv,
    const size_t *argvlen);
/*
 * In the handler of a reply: what was left of the command's timeout
 * when the reply came (in milliseconds, 0 when none), for a command
 * sent in its place.
 */
ngx_msec_t ngx_http_dify_redis_conn_left(ngx_http_dify_redis_cmd_t *cmd);
/* the caller has gone (client abort): its handler will not be called */
void ngx_http_dify_redis_conn_cancel(ngx_http_dify_redis_cmd_t *cmd);


#endif /* _NGX_HTTP_DIFY_REDIS_CONN_H_INCLUDED_ */
