/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * What the module's nginx-side files share: configuration, the request
 * context, and the interfaces of the Redis connection, the limiter and
 * the metrics.
 */


#ifndef _NGX_HTTP_DIFY_STATUS_H_INCLUDED_
#define _NGX_HTTP_DIFY_STATUS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <hiredis/hiredis.h>

#include "dify_request.h"
#include "dify_body.h"
#include "dify_gcra.h"
#include "dify_key.h"
#include "dify_redis.h"
#include "dify_cluster.h"

#include "ngx_http_dify_redis_conn.h"


/* the answers of the contract, in its order */
typedef enum {
    NGX_HTTP_DIFY_NOT_FOUND = 0,        /* 404 */
    NGX_HTTP_DIFY_UNAUTHORIZED,         /* 401 */
    NGX_HTTP_DIFY_INVALID_ACTION,       /* 400 */
    NGX_HTTP_DIFY_UNSUPPORTED_MEDIA,    /* 415 */
    NGX_HTTP_DIFY_TOO_LARGE,            /* 413 */
    NGX_HTTP_DIFY_BAD_REQUEST,          /* 400 */
    NGX_HTTP_DIFY_INVALID_PARAM,        /* 400 */
    NGX_HTTP_DIFY_TOO_MANY_REQUESTS,    /* dify_status_limit_status */
    NGX_HTTP_DIFY_FORBIDDEN,            /* 403 */
    NGX_HTTP_DIFY_UNAVAILABLE,          /* 503 */
    NGX_HTTP_DIFY_INTERNAL_ERROR,       /* 500, the module failed */
    NGX_HTTP_DIFY_NCODES
} ngx_http_dify_code_e;


/* what happened to a request, for $dify_status and the metrics */
typedef enum {
    NGX_HTTP_DIFY_OUTCOME_NONE = 0,     /* not (yet) decided */
    NGX_HTTP_DIFY_OUTCOME_PASSED,
    NGX_HTTP_DIFY_OUTCOME_REJECTED,     /* rows 1-7 */
    NGX_HTTP_DIFY_OUTCOME_LIMITED,      /* row 8 */
    NGX_HTTP_DIFY_OUTCOME_BLOCKED,      /* row 8b */
    NGX_HTTP_DIFY_OUTCOME_DRY_RUN,      /* would be limited, passed */
    NGX_HTTP_DIFY_OUTCOME_FB_ALLOWED,   /* Redis failed, let through */
    NGX_HTTP_DIFY_OUTCOME_FB_DENIED,    /* Redis failed, row 9 */
    NGX_HTTP_DIFY_OUTCOME_FB_PASSED,    /* Redis failed, local limit ok */
    NGX_HTTP_DIFY_OUTCOME_FB_LIMITED,   /* Redis failed, local limit hit */
    NGX_HTTP_DIFY_OUTCOME_FAILED        /* the module failed: 500 */
} ngx_http_dify_outcome_e;


/*
 * Where a checked request is.  The phase handler runs again whenever the
 * phases run again for the request: when the limiter resumes it, after
 * an internal redirect (error_page, try_files, X-Accel-Redirect,
 * post_action), and when nginx finalizes the request behind the
 * module's back while the module still waits, refusing the body
 * (malformed chunked encoding, past client_max_body_size, more HTTP/2
 * data than declared, a temporary file it cannot write), and an
 * error_page sends it to another location.  Each entry is decided by
 * the state alone, in whatever location it happens, with any method
 * (an error_page to a URI turns the PATCH into a GET):
 *
 *   NEW       the context is created, the header checks run at once:
 *             -> DECIDED, or BODY
 *   BODY      the body is being read:
 *             the body handler -> DECIDED (rows 5-7, or the limiter
 *             decided at once), or LIMIT;
 *             an entry (nginx refused the body) -> REJECTED, FAILED
 *   LIMIT     a Redis reply or the timer is due (ctx->wait):
 *             the wait handler -> DECIDED;
 *             an entry (nginx finalized the request meanwhile, which
 *             nginx 1.22 does not do) -> REJECTED, FAILED
 *   DECIDED   the verdict is in ctx->status and ctx->outcome:
 *             the next entry -> PASSED, REJECTED, FAILED
 *   PASSED    declined: every later entry declines, the request was
 *             checked once, where it arrived
 *   REJECTED  ctx->status was answered: every later entry answers it
 *             again, directly, and never declines
 *   FAILED    the module failed, or nginx did reading the body, and
 *             a 500 was answered: the same
 *
 * A client that goes away or times out while the module waits ends the
 * request on the spot (ngx_http_terminate_request()): no entry follows,
 * the pool cleanup cancels what is pending.
 */
typedef enum {
    NGX_HTTP_DIFY_STATE_NEW = 0,
    NGX_HTTP_DIFY_STATE_BODY,
    NGX_HTTP_DIFY_STATE_LIMIT,
    NGX_HTTP_DIFY_STATE_DECIDED,
    NGX_HTTP_DIFY_STATE_PASSED,
    NGX_HTTP_DIFY_STATE_REJECTED,
    NGX_HTTP_DIFY_STATE_FAILED
} ngx_http_dify_state_e;


#define NGX_HTTP_DIFY_FALLBACK_ALLOW  0
#define NGX_HTTP_DIFY_FALLBACK_DENY   1
#define NGX_HTTP_DIFY_FALLBACK_LOCAL  2

#define NGX_HTTP_DIFY_COST_REQUEST    0
#define NGX_HTTP_DIFY_COST_DOCUMENTS  1


typedef struct ngx_http_dify_redis_s      ngx_http_dify_redis_t;
typedef struct ngx_http_dify_redis_req_s  ngx_http_dify_redis_req_t;
typedef struct ngx_http_dify_limiter_s    ngx_http_dify_limiter_t;
typedef struct ngx_http_dify_sentinel_s   ngx_http_dify_sentinel_t;
typedef struct ngx_http_dify_cluster_s    ngx_http_dify_cluster_t;
typedef struct ngx_http_dify_cluster_cmd_s  ngx_http_dify_cluster_cmd_t;


/* one dify_status_limit */
typedef struct {
    ngx_str_t                  name;                /* "default" */
    dify_gcra_limit_t          limit;
    ngx_uint_t                 cost;                /* _COST_* */
    ngx_http_complex_value_t  *key;                 /* NULL: the token */
    u_char                    *key_hash;            /* a constant key's */
} ngx_http_dify_limit_conf_t;


/* dify_status_redis ... sentinel=name: see ngx_http_dify_status_sentinel.c */
typedef struct {
    ngx_str_t                  name;        /* the master's, at Sentinel */
    ngx_str_t                  user;
    ngx_str_t                  password;
    ngx_uint_t                 n;
    ngx_http_dify_redis_conf_t *query;      /* n: one per Sentinel */
    ngx_http_dify_redis_conf_t *events;     /* n: subscribed */
    ngx_flag_t                 ssl_name;    /* dify_status_redis_ssl_name */
} ngx_http_dify_sentinel_conf_t;


typedef struct {
    ngx_str_t                  text;
    u_char                     sha1[DIFY_SHA1_HEX_LEN];
} ngx_http_dify_redis_script_t;


typedef struct {
    ngx_http_dify_redis_conf_t *redis;      /* NULL: no Redis configured */

    /*
     * of ngx_http_dify_redis_conf_t: every address of dify_status_redis
     * with the same settings, as written; *redis is the first.  Those of
     * a Cluster are its seed nodes, those of "sentinel=" the Sentinels.
     */
    ngx_array_t               *redis_addrs;
    ngx_flag_t                 redis_cluster;
    ngx_http_dify_sentinel_conf_t *sentinel;  /* NULL: no Sentinel */
    /* the http level's resolver, for the names reported by Redis */
    ngx_resolver_t            *redis_resolver;
    ngx_msec_t                 redis_resolver_timeout;
    ngx_shm_zone_t            *shm_zone;    /* keys' state, see limit.c */
    size_t                     shm_size;
    ngx_shm_zone_t            *metrics_zone;
    ngx_flag_t                 limit_used;
    ngx_http_dify_redis_script_t *script;   /* the limiter's */
    ngx_http_dify_redis_t     *rs;          /* per worker */

    /* dify_status_redis_ssl_* */
    ngx_flag_t                 ssl_verify;
    ngx_str_t                  ssl_trusted_certificate;
    ngx_str_t                  ssl_name;
    ngx_str_t                  ssl_certificate;
    ngx_str_t                  ssl_certificate_key;
} ngx_http_dify_main_conf_t;


typedef struct {
    ngx_flag_t                 enable;
    size_t                     max_body_size;
    ngx_uint_t                 max_documents;
    ngx_uint_t                 document_ids;        /* 0 uuid, 1 any */
    ngx_uint_t                 duplicate_ids;       /* 0 allow, 1 reject */
    ngx_str_t                  token_prefix;        /* empty: off */

    ngx_flag_t                 limit_set;
    ngx_array_t               *limits;      /* ngx_http_dify_limit_conf_t */
    ngx_uint_t                 limit_status;
    ngx_flag_t                 limit_headers;
    ngx_uint_t                 fallback;
    ngx_flag_t                 dry_run;
    ngx_uint_t                 log_level;
    ngx_str_t                  prefix;              /* Redis key prefix */
    uint32_t                   prefix_crc;
} ngx_http_dify_loc_conf_t;


typedef struct {
    ngx_uint_t                 state;               /* _STATE_* */
    ngx_uint_t                 outcome;             /* _OUTCOME_* */
    ngx_uint_t                 code;                /* when rejected */
    ngx_uint_t                 status;              /* when rejected */
    off_t                      max_body;            /* client_max_body_size */

    ngx_str_t                  dataset_id;
    ngx_str_t                  action;
    ngx_uint_t                 documents;           /* count of ids */
    u_char                     key_hash[DIFY_KEY_HASH_LEN];
    u_char                     message[DIFY_BODY_MESSAGE_LEN];
    size_t                     message_len;

    /*
     * when has_gcra: the limit that refused the request (the longest
     * wait), or else the one with the least remaining
     */
    dify_gcra_result_t         gcra;
    ngx_str_t                  limit_name;          /* the one that refused */
    ngx_http_dify_limiter_t   *limiter;             /* the limits' state */
    ngx_event_t                wait;                /* posted: resume */
    ngx_http_request_t        *request;

    unsigned                   has_key:1;
    unsigned                   has_gcra:1;
    unsigned                   headers_added:1;
} ngx_http_dify_ctx_t;


extern ngx_module_t  ngx_http_dify_status_module;


/*
 * ngx_http_dify_status_redis.c: the command layer the limiter uses, over
 * the transport (ngx_http_dify_redis_conn.h).  The handler of a call is
 * called exactly once for every call ngx_http_dify_redis_eval()
 * accepted, as the transport's is (see there), unless the caller
 * cancelled it first or the worker is exiting.  Error replies are the
 * caller's to count; NOSCRIPT is handled here.
 */
char *ngx_http_dify_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_dify_redis_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf);
ngx_http_dify_redis_script_t *ngx_http_dify_redis_script(ngx_conf_t *cf,
    ngx_http_dify_redis_conf_t *rcf, const char *text);
ngx_int_t ngx_http_dify_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf);
void ngx_http_dify_redis_exit_process(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf);
/*
 * EVALSHA script argv... (numkeys, keys, arguments); NULL when Redis is
 * down, or on failure.  The timeout is in milliseconds.
 */
ngx_http_dify_redis_req_t *ngx_http_dify_redis_eval(
    ngx_http_dify_redis_t *rs, ngx_http_dify_redis_script_t *script,
    ngx_http_dify_redis_pt handler, void *data, ngx_msec_t timeout,
    int argc, const char **argv, const size_t *argvlen);
/*
 * The same with numkeys 0 (the keys in the arguments), in a Cluster:
 * routed to the node of slot, and never redirected (an undeclared key
 * the node does not serve fails the script: "non local key").
 */
ngx_http_dify_redis_req_t *ngx_http_dify_redis_eval_slot(
    ngx_http_dify_redis_t *rs, ngx_uint_t slot,
    ngx_http_dify_redis_script_t *script, ngx_http_dify_redis_pt handler,
    void *data, ngx_msec_t timeout, int argc, const char **argv,
    const size_t *argvlen);
/* in a Cluster: the node that serves slot in the map, or NGX_ERROR */
ngx_int_t ngx_http_dify_redis_node(ngx_http_dify_redis_t *rs,
    ngx_uint_t slot);
/* an error reply to a node's batch that says the map was stale */
ngx_uint_t ngx_http_dify_redis_stale(ngx_http_dify_redis_t *rs,
    redisReply *reply);
/* the caller has gone (client abort): its handler will not be called */
void ngx_http_dify_redis_cancel(ngx_http_dify_redis_req_t *req);
ngx_uint_t ngx_http_dify_redis_batches(ngx_http_dify_redis_t *rs);


/*
 * ngx_http_dify_status_sentinel.c: the primary named by the Sentinels,
 * followed through failovers; the command layer calls _suspect() when a
 * command on the primary failed in a way a failover explains
 */
ngx_int_t ngx_http_dify_sentinel_parameter(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf, ngx_str_t *value);
ngx_int_t ngx_http_dify_sentinel_check(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf, ngx_http_dify_redis_conf_t *rcf);
ngx_int_t ngx_http_dify_sentinel_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf);
ngx_http_dify_sentinel_t *ngx_http_dify_sentinel_create(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf, ngx_http_dify_redis_conn_t **primary);
void ngx_http_dify_sentinel_destroy(ngx_http_dify_sentinel_t *st);
void ngx_http_dify_sentinel_suspect(ngx_http_dify_sentinel_t *st,
    ngx_http_dify_redis_conn_t *conn);


/*
 * ngx_http_dify_status_cluster.c: Redis Cluster under the command
 * layer, per worker.  A command goes to the node of its slot and
 * follows MOVED and ASK; its handler is called exactly once, as the
 * transport's is, unless cancelled first or the worker is exiting.
 * argv and argvlen must live until then.
 */
ngx_http_dify_cluster_t *ngx_http_dify_cluster_create(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf);
void ngx_http_dify_cluster_close(ngx_http_dify_cluster_t *cl);
ngx_http_dify_cluster_cmd_t *ngx_http_dify_cluster_send(
    ngx_http_dify_cluster_t *cl, ngx_uint_t slot,
    ngx_http_dify_redis_pt handler, void *data, ngx_msec_t timeout,
    int argc, const char **argv, const size_t *argvlen);
void ngx_http_dify_cluster_cancel(ngx_http_dify_cluster_cmd_t *ccmd);
/* the node serving slot in the worker's map, or NGX_ERROR: unknown */
ngx_int_t ngx_http_dify_cluster_slot_node(ngx_http_dify_cluster_t *cl,
    ngx_uint_t slot);
/* the map is stale: read it again (no more often than a MOVED does) */
void ngx_http_dify_cluster_stale(ngx_http_dify_cluster_t *cl);
ngx_http_dify_redis_cmd_t *ngx_http_dify_cluster_last(
    ngx_http_dify_cluster_cmd_t *ccmd, ngx_http_dify_redis_conn_t **conn);


/* ngx_http_dify_status_metrics.c: counters in shared memory */
typedef enum {
    NGX_HTTP_DIFY_M_CHECKED = 0,        /* requests intercepted */
    NGX_HTTP_DIFY_M_PASSED,
    NGX_HTTP_DIFY_M_LIMITED,
    NGX_HTTP_DIFY_M_LIMITED_CACHED,     /* limited without asking Redis */
    NGX_HTTP_DIFY_M_DRY_RUN_LIMITED,
    NGX_HTTP_DIFY_M_REDIS_COMMANDS,
    NGX_HTTP_DIFY_M_REDIS_ERRORS,
    NGX_HTTP_DIFY_M_REDIS_TIMEOUTS,
    NGX_HTTP_DIFY_M_REDIS_RECONNECTS,
    NGX_HTTP_DIFY_M_REDIS_NOSCRIPT,
    NGX_HTTP_DIFY_M_REDIS_RESOLVE_FAILURES,
    NGX_HTTP_DIFY_M_REDIS_TLS_FAILURES,
    NGX_HTTP_DIFY_M_REDIS_MOVED,        /* Cluster redirections */
    NGX_HTTP_DIFY_M_REDIS_ASK,
    NGX_HTTP_DIFY_M_REDIS_TOPOLOGY_REFRESHES,   /* Sentinel, Cluster */
    NGX_HTTP_DIFY_M_REDIS_FAILOVERS,    /* primaries replaced */
    NGX_HTTP_DIFY_M_REDIS_DECISIONS,    /* groups decided by the script */
    NGX_HTTP_DIFY_M_REDIS_CLUSTER_SPLITS, /* node batches sent again */
    NGX_HTTP_DIFY_M_FALLBACK_ALLOW,
    NGX_HTTP_DIFY_M_FALLBACK_DENY,
    NGX_HTTP_DIFY_M_FALLBACK_LOCAL_PASSED,
    NGX_HTTP_DIFY_M_FALLBACK_LOCAL_LIMITED,
    NGX_HTTP_DIFY_M_NCOUNTERS
} ngx_http_dify_metric_e;

void ngx_http_dify_metrics_inc(ngx_uint_t metric);
void ngx_http_dify_metrics_rejected(ngx_uint_t code, ngx_uint_t status);
void ngx_http_dify_metrics_rtt(ngx_msec_int_t usec);   /* in microseconds */
void ngx_http_dify_metrics_redis_error(ngx_uint_t cls); /* dify_redis_err_e */
/* connections up: +1 when one is, -1 when it no longer is */
void ngx_http_dify_metrics_redis_up(ngx_int_t delta);
/* a Redis node's counters by its address: an index, or -1 (not counted) */
ngx_int_t ngx_http_dify_metrics_node(ngx_str_t *name);
void ngx_http_dify_metrics_node_inc(ngx_int_t node, ngx_int_t commands,
    ngx_int_t up);
ngx_int_t ngx_http_dify_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf);
char *ngx_http_dify_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


/* ngx_http_dify_status_limit.c: the limiter */
ngx_int_t ngx_http_dify_limit_init_conf(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf);
char *ngx_http_dify_limit_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
/*
 * Decides the limit for a validated request.  Returns NGX_OK when the
 * verdict is known at once (ctx->outcome set), NGX_AGAIN when a Redis
 * reply is awaited: once decided (the reply, or the fallback when none
 * came within the Redis timeout), ctx->wait is posted to resume the
 * request.  A pending command is cancelled through ctx->cmd.
 */
ngx_int_t ngx_http_dify_limit_start(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
/* adds the RateLimit fields to r->headers_out when configured */
ngx_int_t ngx_http_dify_limit_headers(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
/* adds Retry-After to a rejection that has one (limited, 503) */
ngx_int_t ngx_http_dify_limit_retry_after(ngx_http_request_t *r,
    ngx_http_dify_ctx_t *ctx);
/* cancels the limiter's pending Redis commands */
void ngx_http_dify_limit_release(ngx_http_dify_ctx_t *ctx);
void ngx_http_dify_limit_exit_process(ngx_cycle_t *cycle);


/*
 * ngx_http_dify_status_log.c: a rejection's line, as ngx_log_error()
 * writes it, written with the other lines of the same event-loop pass
 */
void ngx_http_dify_log(ngx_uint_t level, ngx_log_t *log, const char *fmt,
    ...);
ngx_int_t ngx_http_dify_log_init_process(ngx_cycle_t *cycle);
void ngx_http_dify_log_exit_process(ngx_cycle_t *cycle);


/* ngx_http_dify_status_variables.c */
ngx_int_t ngx_http_dify_add_variables(ngx_conf_t *cf);


/* ngx_http_dify_status_ctx.c: the request's context */
ngx_http_dify_ctx_t *ngx_http_dify_ctx_create(ngx_http_request_t *r,
    ngx_event_handler_pt wait);
/* also after an internal redirect; NULL when the module made none */
ngx_http_dify_ctx_t *ngx_http_dify_get_ctx(ngx_http_request_t *r);
/* cancels its Redis command, removes its timer and posted event */
void ngx_http_dify_ctx_release(ngx_http_dify_ctx_t *ctx);
/* records a rejection: the phase handler sends it */
void ngx_http_dify_reject(ngx_http_dify_ctx_t *ctx, ngx_uint_t code,
    ngx_uint_t status, const char *message, size_t len);
extern const ngx_str_t  ngx_http_dify_codes[NGX_HTTP_DIFY_NCODES];


#endif /* _NGX_HTTP_DIFY_STATUS_H_INCLUDED_ */
