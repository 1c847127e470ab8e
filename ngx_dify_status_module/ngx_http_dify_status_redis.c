
/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * The command layer between the limiter and the Redis transport: the
 * worker's Redis (one connection per configured server, made in
 * init_process from the cycle's pool and closed in exit_process), the
 * scripts (loaded by every new connection's handshake), and EVALSHA
 * with its NOSCRIPT recovery, so that the full script is sent once per
 * connection, not once per request in flight.
 *
 * Under Sentinel, conn is the current primary's, replaced after a
 * failover (see ngx_http_dify_status_sentinel.c), and NULL while none is
 * known.
 *
 * The dify_status_redis directive is parsed here too.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dify_status.h"


#define NGX_HTTP_DIFY_REDIS_PORT           6379
#define NGX_HTTP_DIFY_REDIS_TIMEOUT        50       /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_CONNECT        200      /* in milliseconds */
#define NGX_HTTP_DIFY_REDIS_MAX_ARGS       4096

/* an error class seen again after this long is logged again */
#define NGX_HTTP_DIFY_REDIS_ERR_RELOG      60000    /* in milliseconds */


struct ngx_http_dify_redis_s {
    ngx_http_dify_redis_conf_t    *conf;
    ngx_http_dify_redis_conn_t    *conn;
    ngx_http_dify_sentinel_t      *sentinel;    /* or NULL */
    ngx_http_dify_cluster_t       *cluster;     /* or conn */
    ngx_log_t                     *log;
    ngx_queue_t                    reqs;        /* in flight */

    /* the class of the last error reply logged, and when last seen */
    dify_redis_err_e               err;
    ngx_msec_t                     err_seen;
};


/* a script call in flight: its arguments are kept for a second try */
struct ngx_http_dify_redis_req_s {
    ngx_http_dify_redis_t         *rs;
    ngx_queue_t                    queue;
    ngx_http_dify_redis_script_t  *script;
    ngx_http_dify_redis_cmd_t     *cmd;
    ngx_http_dify_redis_conn_t    *conn;        /* of cmd */
    ngx_http_dify_cluster_cmd_t   *ccmd;        /* or cmd */
    ngx_uint_t                     slot;        /* of the first key */
    ngx_http_dify_redis_pt         handler;     /* NULL: cancelled */
    void                          *data;
    int                            argc;        /* after the script */
    const char                   **argv;        /* argc + 2 */
    size_t                        *argvlen;
    unsigned                       retried:1;
    unsigned                       undeclared:1; /* numkeys 0, by slot */
    /* followed by argv, argvlen and the arguments' bytes */
};


static ngx_http_dify_redis_req_t *ngx_http_dify_redis_call(
    ngx_http_dify_redis_t *rs, ngx_uint_t slot, ngx_uint_t undeclared,
    ngx_http_dify_redis_script_t *script, ngx_http_dify_redis_pt handler,
    void *data, ngx_msec_t timeout, int argc, const char **argv,
    const size_t *argvlen);
static ngx_int_t ngx_http_dify_redis_send(ngx_http_dify_redis_req_t *req,
    ngx_uint_t eval, ngx_msec_t timeout);
static void ngx_http_dify_redis_reply(redisReply *reply, void *data);
static void ngx_http_dify_redis_error(ngx_http_dify_redis_t *rs,
    redisReply *reply);
static ngx_int_t ngx_http_dify_redis_copy(ngx_conf_t *cf, ngx_str_t *dst,
    u_char *src, size_t len);
static ngx_int_t ngx_http_dify_redis_parse_address(ngx_conf_t *cf,
    ngx_http_dify_redis_conf_t *rcf, ngx_str_t *value);
static ngx_int_t ngx_http_dify_redis_init_addr(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf, ngx_http_dify_redis_conf_t *rcf);
#if (NGX_SSL)
static ngx_int_t ngx_http_dify_redis_set_ssl(ngx_conf_t *cf,
    ngx_http_dify_main_conf_t *mcf, ngx_http_dify_redis_conf_t *rcf);
#endif


ngx_int_t
ngx_http_dify_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf)
{
    ngx_http_dify_redis_t  *rs;

    mcf->rs = NULL;

    if (mcf->redis == NULL) {
        return NGX_OK;
    }

    /* the cache manager and loader run init_process too */

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    rs = ngx_pcalloc(cycle->pool, sizeof(ngx_http_dify_redis_t));
    if (rs == NULL) {
        return NGX_ERROR;
    }

    rs->conf = mcf->redis;
    rs->log = cycle->log;
    ngx_queue_init(&rs->reqs);

    if (mcf->sentinel != NULL) {
        rs->sentinel = ngx_http_dify_sentinel_create(cycle, mcf, &rs->conn);
        if (rs->sentinel == NULL) {
            return NGX_ERROR;
        }

    } else if (mcf->redis_cluster) {
        rs->cluster = ngx_http_dify_cluster_create(cycle, mcf);
        if (rs->cluster == NULL) {
            return NGX_ERROR;
        }

    } else {
        rs->conn = ngx_http_dify_redis_conn_create(cycle, mcf->redis);
        if (rs->conn == NULL) {
            return NGX_ERROR;
        }
    }

    mcf->rs = rs;

    return NGX_OK;
}


void
ngx_http_dify_redis_exit_process(ngx_cycle_t *cycle,
    ngx_http_dify_main_conf_t *mcf)
{
    ngx_queue_t                *q;
    ngx_http_dify_redis_req_t  *req;

    if (mcf->rs == NULL) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, cycle->log, 0,
                   "dify_status redis: closing on exit");

    if (mcf->rs->cluster != NULL) {
        ngx_http_dify_cluster_close(mcf->rs->cluster);

    } else if (mcf->rs->conn != NULL) {
        ngx_http_dify_redis_conn_close(mcf->rs->conn);
    }

    if (mcf->rs->sentinel != NULL) {
        ngx_http_dify_sentinel_destroy(mcf->rs->sentinel);
    }

    /* called back by nobody now */

    while (!ngx_queue_empty(&mcf->rs->reqs)) {
        q = ngx_queue_head(&mcf->rs->reqs);
        req = ngx_queue_data(q, ngx_http_dify_redis_req_t, queue);

        ngx_queue_remove(q);
        ngx_free(req);
    }

    mcf->rs = NULL;
}


/*
 * A script of the limiter's, at configuration time: its SHA-1 for
 * EVALSHA, and SCRIPT LOAD in every new connection's handshake.
 */

ngx_http_dify_redis_script_t *
ngx_http_dify_redis_script(ngx_conf_t *cf, ngx_http_dify_redis_conf_t *rcf,
    const char *text)
{
    int                            len;
    char                          *cmd;
    size_t                         argvlen[3];
    ngx_str_t                     *init;
    const char                    *argv[3];
    ngx_http_dify_redis_script_t  *script;

    script = ngx_pcalloc(cf->pool, sizeof(ngx_http_dify_redis_script_t));
    if (script == NULL) {
        return NULL;
    }

    script->text.data = (u_char *) text;
    script->text.len = ngx_strlen(text);

    if (dify_sha1_hex(script->text.data, script->text.len,
                      (char *) script->sha1)
        != 0)
    {
        return NULL;
    }

    if (rcf->init == NULL) {
        rcf->init = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
        if (rcf->init == NULL) {
            return NULL;
        }
    }

    argv[0] = "SCRIPT";
    argvlen[0] = sizeof("SCRIPT") - 1;
    argv[1] = "LOAD";
    argvlen[1] = sizeof("LOAD") - 1;
    argv[2] = text;
    argvlen[2] = script->text.len;

    len = redisFormatCommandArgv(&cmd, 3, argv, argvlen);
    if (len < 0) {
        return NULL;
    }

    init = ngx_array_push(rcf->init);
    if (init == NULL) {
        free(cmd);
        return NULL;
    }

    init->len = len;
    init->data = ngx_pnalloc(cf->pool, len);
    if (init->data == NULL) {
        free(cmd);
        return NULL;
    }

    ngx_memcpy(init->data, cmd, len);
    free(cmd);

    return script;
}


/*
 * EVALSHA sha argv..., or EVAL with the script itself after a NOSCRIPT.
 * The handler is called exactly once, as the transport's is, unless
 * cancelled first or the worker is exiting.
 */

ngx_http_dify_redis_req_t *
ngx_http_dify_redis_eval(ngx_http_dify_redis_t *rs,
    ngx_http_dify_redis_script_t *script, ngx_http_dify_redis_pt handler,
    void *data, ngx_msec_t timeout, int argc, const char **argv,
    const size_t *argvlen)
{
    ngx_uint_t  slot;

    slot = 0;

    /* a Cluster routes by the first key; every key has its slot */

    if (rs != NULL && rs->cluster != NULL
        && argc > 1 && !(argvlen[0] == 1 && argv[0][0] == '0'))
    {
        slot = dify_cluster_keyslot(argv[1], argvlen[1]);
    }

    return ngx_http_dify_redis_call(rs, slot, 0, script, handler, data,
                                    timeout, argc, argv, argvlen);
}


ngx_http_dify_redis_req_t *
ngx_http_dify_redis_eval_slot(ngx_http_dify_redis_t *rs, ngx_uint_t slot,
    ngx_http_dify_redis_script_t *script, ngx_http_dify_redis_pt handler,
    void *data, ngx_msec_t timeout, int argc, const char **argv,
    const size_t *argvlen)
{
    return ngx_http_dify_redis_call(rs, slot, 1, script, handler, data,
                                    timeout, argc, argv, argvlen);
}


static ngx_http_dify_redis_req_t *
ngx_http_dify_redis_call(ngx_http_dify_redis_t *rs, ngx_uint_t slot,
    ngx_uint_t undeclared, ngx_http_dify_redis_script_t *script,
    ngx_http_dify_redis_pt handler, void *data, ngx_msec_t timeout,
    int argc, const char **argv, const size_t *argvlen)
{
    int                         i;
    u_char                     *p;
    size_t                      size;
    ngx_http_dify_redis_req_t  *req;

    if (rs == NULL || argc < 1 || argc > NGX_HTTP_DIFY_REDIS_MAX_ARGS - 2) {
        return NULL;
    }

    size = sizeof(ngx_http_dify_redis_req_t)
           + (argc + 2) * (sizeof(const char *) + sizeof(size_t));

    for (i = 0; i < argc; i++) {
        size += argvlen[i];
    }

    req = ngx_alloc(size, rs->log);
    if (req == NULL) {
        return NULL;
    }

    ngx_memzero(req, sizeof(ngx_http_dify_redis_req_t));

    req->rs = rs;
    req->script = script;
    req->handler = handler;
    req->data = data;
    req->argc = argc;

    req->argv = (const char **) ((u_char *) req
                                 + sizeof(ngx_http_dify_redis_req_t));
    req->argvlen = (size_t *) (req->argv + argc + 2);

    p = (u_char *) (req->argvlen + argc + 2);

    for (i = 0; i < argc; i++) {
        req->argv[i + 2] = (const char *) p;
        req->argvlen[i + 2] = argvlen[i];
        p = ngx_cpymem(p, argv[i], argvlen[i]);
    }

    req->slot = slot;
    req->undeclared = undeclared;

    if (ngx_http_dify_redis_send(req, 0, timeout) != NGX_OK) {
        ngx_free(req);
        return NULL;
    }

    ngx_queue_insert_tail(&rs->reqs, &req->queue);

    return req;
}


/*
 * 1 when one command may carry the keys of many slots: always, but in a
 * Cluster, where a command's keys must share one.
 */

ngx_uint_t
ngx_http_dify_redis_batches(ngx_http_dify_redis_t *rs)
{
    return rs != NULL && rs->cluster == NULL;
}


ngx_int_t
ngx_http_dify_redis_node(ngx_http_dify_redis_t *rs, ngx_uint_t slot)
{
    if (rs == NULL || rs->cluster == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_dify_cluster_slot_node(rs->cluster, slot);
}


/*
 * A script that touched an undeclared key its node does not serve (or
 * ran while the node saw the cluster down) fails as a whole, having
 * written nothing: "Script attempted to access a non local key in a
 * cluster node", "Script attempted to execute a command while the
 * cluster is down".
 */

ngx_uint_t
ngx_http_dify_redis_stale(ngx_http_dify_redis_t *rs, redisReply *reply)
{
    static u_char  word[] = "Script attempted to ";

    return rs != NULL && rs->cluster != NULL && reply != NULL
           && reply->type == REDIS_REPLY_ERROR && reply->str != NULL
           && ngx_strlcasestrn((u_char *) reply->str,
                               (u_char *) reply->str
                               + ngx_min(reply->len, 64),
                               word, sizeof(word) - 2)
              != NULL;
}


void
ngx_http_dify_redis_cancel(ngx_http_dify_redis_req_t *req)
{
    if (req == NULL) {
        return;
    }

    /* the transport calls nothing back for a cancelled command */

    if (req->rs->cluster != NULL) {
        ngx_http_dify_cluster_cancel(req->ccmd);

    } else {
        ngx_http_dify_redis_conn_cancel(req->cmd);
    }

    ngx_queue_remove(&req->queue);
    ngx_free(req);
}


static ngx_int_t
ngx_http_dify_redis_send(ngx_http_dify_redis_req_t *req, ngx_uint_t eval,
    ngx_msec_t timeout)
{
    if (eval) {
        req->argv[0] = "EVAL";
        req->argvlen[0] = sizeof("EVAL") - 1;
        req->argv[1] = (const char *) req->script->text.data;
        req->argvlen[1] = req->script->text.len;

    } else {
        req->argv[0] = "EVALSHA";
        req->argvlen[0] = sizeof("EVALSHA") - 1;
        req->argv[1] = (const char *) req->script->sha1;
        req->argvlen[1] = DIFY_SHA1_HEX_LEN;
    }

    if (req->rs->cluster != NULL) {
        req->ccmd = ngx_http_dify_cluster_send(req->rs->cluster, req->slot,
                                               ngx_http_dify_redis_reply,
                                               req, timeout, req->argc + 2,
                                               req->argv, req->argvlen);

        return (req->ccmd != NULL) ? NGX_OK : NGX_ERROR;
    }

    req->conn = req->rs->conn;

    if (req->conn == NULL) {
        /* no primary known yet */
        ngx_http_dify_sentinel_suspect(req->rs->sentinel, NULL);
        return NGX_ERROR;
    }

    req->cmd = ngx_http_dify_redis_conn_send(req->conn,
                                             ngx_http_dify_redis_reply, req,
                                             timeout, req->argc + 2,
                                             req->argv, req->argvlen);
    if (req->cmd == NULL) {
        /* the connection is down */
        ngx_http_dify_sentinel_suspect(req->rs->sentinel, req->conn);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_dify_redis_reply(redisReply *reply, void *data)
{
    ngx_http_dify_redis_req_t *req = data;

    void                        *hdata;
    ngx_msec_t                   left;
    ngx_uint_t                   eval;
    ngx_http_dify_redis_pt       handler;
    ngx_http_dify_redis_cmd_t   *cmd;
    ngx_http_dify_redis_conn_t  *conn;

    if (req->rs->cluster != NULL) {
        /* the node's connection the reply came on */
        cmd = ngx_http_dify_cluster_last(req->ccmd, &conn);
        req->ccmd = NULL;

    } else {
        cmd = req->cmd;
        conn = req->conn;
    }

    req->cmd = NULL;

    if (reply == NULL) {
        /* lost with the connection, or no reply in time */
        ngx_http_dify_sentinel_suspect(req->rs->sentinel, conn);
    }

    if (reply != NULL
        && cmd != NULL
        && reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8
        && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
        && !req->retried)
    {
        ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_NOSCRIPT);

        req->retried = 1;

        /*
         * Redis lost its scripts (a restart, SCRIPT FLUSH, or a SCRIPT
         * LOAD the ACL refuses).  The first NOSCRIPT since the last full
         * script sent on this connection sends it again with EVAL; the
         * commands sent before that EVAL try EVALSHA again, now queued
         * behind it.  In what is left of the request's time.
         */

        eval = (ngx_http_dify_redis_cmd_epoch(cmd)
                == ngx_http_dify_redis_conn_epoch(conn));

        left = ngx_http_dify_redis_conn_left(cmd);

        if (left != 0 && ngx_http_dify_redis_send(req, eval, left) == NGX_OK) {

            if (eval) {
                ngx_http_dify_redis_conn_bump(conn);
            }

            return;
        }
    }

    /*
     * A node's batch on a stale map: the map is read again (as after a
     * MOVED), and the caller sends each of its groups again; not an
     * error of Redis.
     */

    if (req->undeclared && ngx_http_dify_redis_stale(req->rs, reply)) {
        ngx_http_dify_cluster_stale(req->rs->cluster);

    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {

        if (req->rs->sentinel != NULL
            && dify_redis_error_class(reply->str, reply->len)
               == DIFY_REDIS_ERR_READONLY)
        {
            /* a primary demoted */
            ngx_http_dify_sentinel_suspect(req->rs->sentinel, conn);
        }

        ngx_http_dify_redis_error(req->rs, reply);
    }

    handler = req->handler;
    hdata = req->data;

    ngx_queue_remove(&req->queue);
    ngx_free(req);

    handler(reply, hdata);
}


/*
 * An error reply handed to the caller: counted by class, and logged
 * when its class differs from the last one logged (or that class was
 * last seen a while ago), never once per request.
 */

static void
ngx_http_dify_redis_error(ngx_http_dify_redis_t *rs, redisReply *reply)
{
    dify_redis_err_e  cls;

    cls = dify_redis_error_class(reply->str, reply->len);

    ngx_http_dify_metrics_inc(NGX_HTTP_DIFY_M_REDIS_ERRORS);
    ngx_http_dify_metrics_redis_error(cls);

    if (cls != rs->err
        || ngx_current_msec - rs->err_seen > NGX_HTTP_DIFY_REDIS_ERR_RELOG)
    {
        ngx_log_error(NGX_LOG_ERR, rs->log, 0,
                      "redis \"%V\" answered \"%*s\": requests take the "
                      "fallback (logged once per class of error, \"%s\")",
                      &rs->conf->address, (size_t) ngx_min(reply->len, 256),
                      reply->str, dify_redis_error_name(cls));

        rs->err = cls;
    }

    rs->err_seen = ngx_current_msec;
}


/* once the http block is read: TLS and names, for every address */

ngx_int_t
ngx_http_dify_redis_init_conf(ngx_conf_t *cf, ngx_http_dify_main_conf_t *mcf)
{
    ngx_uint_t                   i;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_dify_redis_conf_t  *rcf;

    ngx_conf_init_value(mcf->ssl_verify, 1);

    if (mcf->redis == NULL) {
        return NGX_OK;
    }

    if (mcf->sentinel != NULL) {
        mcf->sentinel->ssl_name = (mcf->ssl_name.len != 0);
    }

    /*
     * the http level's own: the one configured there, a dummy without
     * servers when none is (see ngx_http_core_merge_loc_conf), or NULL
     */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->resolver != NULL && clcf->resolver->connections.nelts > 0) {
        mcf->redis_resolver = clcf->resolver;
        mcf->redis_resolver_timeout =
                              (clcf->resolver_timeout == NGX_CONF_UNSET_MSEC)
                              ? 30000 : clcf->resolver_timeout;
    }

    rcf = mcf->redis_addrs->elts;

    for (i = 0; i < mcf->redis_addrs->nelts; i++) {
        if (ngx_http_dify_redis_init_addr(cf, mcf, &rcf[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (mcf->sentinel != NULL) {
        /* the addresses are the Sentinels': the primary is asked for */
        return ngx_http_dify_sentinel_init_conf(cf, mcf);
    }

    return NGX_OK;
}


/*
 * A host name is resolved in the workers by the http-level "resolver"
 * when there is one (again for every new connection, and when the
 * answer expires), otherwise now, once, as proxy_pass does.
 */

static ngx_int_t
ngx_http_dify_redis_init_addr(ngx_conf_t *cf, ngx_http_dify_main_conf_t *mcf,
    ngx_http_dify_redis_conf_t *rcf)
{
    ngx_url_t  u;

    if (rcf->ssl) {
#if (NGX_SSL)
        if (rcf != mcf->redis) {
            /* the first address's context, with this address's name */
            rcf->ssl_ctx = mcf->redis->ssl_ctx;
            rcf->ssl_verify = mcf->redis->ssl_verify;

            rcf->ssl_name = mcf->ssl_name.len ? mcf->redis->ssl_name
                                              : rcf->host;

        } else if (ngx_http_dify_redis_set_ssl(cf, mcf, rcf) != NGX_OK) {
            return NGX_ERROR;
        }

        if (rcf->ssl_verify && rcf->ssl_name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "dify_status_redis \"%V\": a unix socket with "
                               "\"ssl\" needs \"dify_status_redis_ssl_name\" "
                               "to verify",
                               &rcf->address);
            return NGX_ERROR;
        }
#else
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "dify_status_redis: \"ssl\" needs nginx built with "
                           "OpenSSL");
        return NGX_ERROR;
#endif
    }

    if (!rcf->is_name) {
        return NGX_OK;
    }

    if (mcf->redis_resolver != NULL) {
        rcf->resolver = mcf->redis_resolver;
        rcf->resolver_timeout = mcf->redis_resolver_timeout;
        return NGX_OK;
    }

    /* a blocking lookup, in the master, at start and on every reload */

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = rcf->address;
    u.default_port = NGX_HTTP_DIFY_REDIS_PORT;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "dify_status_redis: %s in \"%V\" (without a "
                           "\"resolver\" at http level, the name is resolved "
                           "once, at configuration time)",
                           u.err ? u.err : "host not found", &rcf->address);
        return NGX_ERROR;
    }

    rcf->addrs = u.addrs;
    rcf->naddrs = u.naddrs;

    return NGX_OK;
}


#if (NGX_SSL)

/* the client's TLS context, as proxy_ssl_* makes it */

static ngx_int_t
ngx_http_dify_redis_set_ssl(ngx_conf_t *cf, ngx_http_dify_main_conf_t *mcf,
    ngx_http_dify_redis_conf_t *rcf)
{
    ngx_str_t            ciphers, empty, *name;
    ngx_ssl_t           *ssl;
    ngx_pool_cleanup_t  *cln;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    ngx_str_set(&ciphers, "DEFAULT");

    if (ngx_ssl_ciphers(cf, ssl, &ciphers, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    if (mcf->ssl_certificate.len) {

        if (mcf->ssl_certificate_key.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "no \"dify_status_redis_ssl_certificate_key\" "
                               "for \"dify_status_redis_ssl_certificate\" "
                               "\"%V\"", &mcf->ssl_certificate);
            return NGX_ERROR;
        }

        if (ngx_ssl_certificate(cf, ssl, &mcf->ssl_certificate,
                                &mcf->ssl_certificate_key, NULL)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    rcf->ssl_verify = mcf->ssl_verify;

    if (rcf->ssl_verify) {

        /* depth 9: managed Redis certificates come with intermediates */

        if (mcf->ssl_trusted_certificate.len) {
            if (ngx_ssl_trusted_certificate(cf, ssl,
                                            &mcf->ssl_trusted_certificate, 9)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

        } else {
            /* nginx loads no CA by itself: the system's store */

            ngx_str_null(&empty);

            if (ngx_ssl_trusted_certificate(cf, ssl, &empty, 9) != NGX_OK) {
                return NGX_ERROR;
            }

            if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
                ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                              "SSL_CTX_set_default_verify_paths() failed");
                return NGX_ERROR;
            }
        }
    }

    if (ngx_ssl_client_session_cache(cf, ssl, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the name verified and sent as SNI: the address's host by default */

    name = mcf->ssl_name.len ? &mcf->ssl_name : &rcf->host;

    if (ngx_http_dify_redis_copy(cf, &rcf->ssl_name, name->data, name->len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rcf->ssl_ctx = ssl;

    return NGX_OK;
}

#endif


static ngx_int_t
ngx_http_dify_redis_copy(ngx_conf_t *cf, ngx_str_t *dst, u_char *src,
    size_t len)
{
    /* NUL-terminated */

    dst->data = ngx_pnalloc(cf->pool, len + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_cpystrn(dst->data, src, len + 1);
    dst->len = len;

    return NGX_OK;
}


/*
 * dify_status_redis address ... [cluster | sentinel=name
 *     [sentinel_user=name] [sentinel_password=secret]] [ssl] [db=N]
 *     [user=name] [password=secret] [timeout=time] [connect_timeout=time];
 */

char *
ngx_http_dify_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_dify_main_conf_t *mcf = conf;

    u_char                      *eq;
    ngx_int_t                    n, rv;
    ngx_str_t                   *value, s, name;
    ngx_uint_t                   i, j, naddrs;
    ngx_http_dify_redis_conf_t  *rcf, *a;

    if (mcf->redis != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /*
     * The addresses come first.  Those after the first carry a port
     * (or are "unix:" paths), so that a misspelt parameter ("tls") is
     * not taken for a host name.
     */

    for (naddrs = 0; 1 + naddrs < cf->args->nelts; naddrs++) {
        s = value[1 + naddrs];

        if (ngx_strcmp(s.data, "ssl") == 0
            || ngx_strcmp(s.data, "cluster") == 0
            || ngx_strlchr(s.data, s.data + s.len, '=') != NULL
            || (naddrs > 0
                && ngx_strlchr(s.data, s.data + s.len, ':') == NULL))
        {
            break;
        }
    }

    if (naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "dify_status_redis needs an address");
        return NGX_CONF_ERROR;
    }

    mcf->redis_addrs = ngx_array_create(cf->pool, naddrs,
                                        sizeof(ngx_http_dify_redis_conf_t));
    if (mcf->redis_addrs == NULL) {
        return NGX_CONF_ERROR;
    }

    rcf = ngx_array_push_n(mcf->redis_addrs, naddrs);
    if (rcf == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(rcf, naddrs * sizeof(ngx_http_dify_redis_conf_t));

    rcf->db = 0;
    rcf->timeout = NGX_HTTP_DIFY_REDIS_TIMEOUT;
    rcf->connect_timeout = NGX_HTTP_DIFY_REDIS_CONNECT;

    /* shared by every address: the scripts' SCRIPT LOAD are added later */

    rcf->init = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
    if (rcf->init == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1 + naddrs; i < cf->args->nelts; i++) {

        if (ngx_strcmp(value[i].data, "ssl") == 0) {
            rcf->ssl = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "cluster") == 0) {
            mcf->redis_cluster = 1;
            continue;
        }

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

        rv = ngx_http_dify_sentinel_parameter(cf, mcf, &value[i]);

        if (rv == NGX_OK) {
            continue;
        }

        if (rv == NGX_ERROR) {
            goto invalid;
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

    if (ngx_http_dify_sentinel_check(cf, mcf, rcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (mcf->redis_cluster && mcf->sentinel != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"cluster\" and \"sentinel=\" cannot be used "
                           "together");
        return NGX_CONF_ERROR;
    }

    if (naddrs > 1 && !mcf->redis_cluster && mcf->sentinel == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "several addresses need \"cluster\" (seed "
                           "nodes) or \"sentinel=\" (the Sentinels)");
        return NGX_CONF_ERROR;
    }

    if (mcf->redis_cluster && rcf->db != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"db=\" cannot be used with \"cluster\": a "
                           "Redis Cluster has database 0 only");
        return NGX_CONF_ERROR;
    }

    /* every address with the same settings */

    for (j = 0; j < naddrs; j++) {
        a = &rcf[j];

        if (j > 0) {
            *a = rcf[0];
        }

        if (ngx_http_dify_redis_parse_address(cf, a, &value[1 + j])
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        for (i = 0; i < j; i++) {
            if (rcf[i].address.len == a->address.len
                && ngx_strncmp(rcf[i].address.data, a->address.data,
                               a->address.len)
                   == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "duplicate address \"%V\"", &a->address);
                return NGX_CONF_ERROR;
            }
        }
    }

    mcf->redis = rcf;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

    return NGX_CONF_ERROR;
}


/* an address of dify_status_redis: its host, port, and literal addresses */

static ngx_int_t
ngx_http_dify_redis_parse_address(ngx_conf_t *cf,
    ngx_http_dify_redis_conf_t *rcf, ngx_str_t *value)
{
    ngx_url_t          u;
    const char        *err;
    dify_redis_addr_t  addr;

    rcf->address = *value;

    ngx_str_null(&rcf->host);
    rcf->port = 0;
    rcf->addrs = NULL;
    rcf->naddrs = 0;
    rcf->is_name = 0;

    if (dify_redis_parse_addr((const char *) value->data, value->len,
                              &addr, &err)
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\": %s", value, err);
        return NGX_ERROR;
    }

    if (addr.type != DIFY_REDIS_ADDR_UNIX) {
        if (ngx_http_dify_redis_copy(cf, &rcf->host, (u_char *) addr.host,
                                     addr.host_len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        rcf->port = (in_port_t) addr.port;
    }

    if (addr.type == DIFY_REDIS_ADDR_NAME) {
        /* resolved in init_conf, once the whole http block is known */
        rcf->is_name = 1;
        return NGX_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *value;
    u.default_port = NGX_HTTP_DIFY_REDIS_PORT;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%s in \"%V\"",
                           u.err ? u.err : "invalid address", &u.url);
        return NGX_ERROR;
    }

    rcf->addrs = u.addrs;
    rcf->naddrs = u.naddrs;

    return NGX_OK;
}
