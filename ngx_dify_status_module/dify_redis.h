/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * What the Redis side needs that needs no nginx: the address of a
 * server as dify_status_redis takes it, the class of an error reply,
 * and the replies of Sentinel.
 * Pure logic: no nginx header is included here (hiredis types only).
 */


#ifndef _DIFY_REDIS_H_INCLUDED_
#define _DIFY_REDIS_H_INCLUDED_


#include <stddef.h>
#include <hiredis/hiredis.h>


#define DIFY_REDIS_DEFAULT_PORT  6379


typedef enum {
    DIFY_REDIS_ADDR_NAME = 0,           /* a host name, to resolve */
    DIFY_REDIS_ADDR_IPV4,
    DIFY_REDIS_ADDR_IPV6,
    DIFY_REDIS_ADDR_UNIX
} dify_redis_addr_e;


typedef struct {
    dify_redis_addr_e   type;
    const char         *host;           /* into the input, no brackets */
    size_t              host_len;       /* the path, for a unix socket */
    unsigned            port;           /* 0 for a unix socket */
} dify_redis_addr_t;


/*
 * "host:port", "host" (port 6379), "[v6]:port", "[v6]", "a.b.c.d:port"
 * or "unix:/path".  A host name is a DNS name: labels of letters,
 * digits, '-' and '_', 1 to 63 bytes each, 253 in all, an optional
 * final '.'.  Returns 0, or -1 with *err set to a static description.
 */
int dify_redis_parse_addr(const char *s, size_t len, dify_redis_addr_t *addr,
    const char **err);


/*
 * A command in RESP, as redisFormatCommandArgv() writes it ("*N\r\n",
 * then "$LEN\r\nDATA\r\n" per argument) but without printf: the bytes
 * dify_redis_format_len() counts, into buf; returns their number.
 */
size_t dify_redis_format_len(int argc, const size_t *argvlen);
size_t dify_redis_format(char *buf, int argc, const char **argv,
    const size_t *argvlen);

/* the classes of error replies the module tells apart */
typedef enum {
    DIFY_REDIS_ERR_NONE = 0,            /* not an error reply */
    DIFY_REDIS_ERR_NOSCRIPT,
    DIFY_REDIS_ERR_NOAUTH,
    DIFY_REDIS_ERR_WRONGPASS,
    DIFY_REDIS_ERR_NOPERM,
    DIFY_REDIS_ERR_OOM,
    DIFY_REDIS_ERR_READONLY,
    DIFY_REDIS_ERR_LOADING,
    DIFY_REDIS_ERR_BUSY,
    DIFY_REDIS_ERR_MASTERDOWN,
    DIFY_REDIS_ERR_CLUSTER,             /* MOVED, ASK, TRYAGAIN, ... */
    DIFY_REDIS_ERR_OTHER,               /* ERR and anything else */
    DIFY_REDIS_ERR_N
} dify_redis_err_e;


/*
 * The class of an error reply's text (what follows '-'): its first word,
 * and a script refused a command by the ACL ("ERR The user executing
 * the script can't run this command ...") counts as NOPERM.  An empty
 * text is OTHER.
 */
dify_redis_err_e dify_redis_error_class(const char *str, size_t len);

/* "noscript", "noperm", ...: a metric label; "none" for NONE */
const char *dify_redis_error_name(dify_redis_err_e cls);


/*
 * SENTINEL GET-MASTER-ADDR-BY-NAME: [$ip, $port], the port a bulk string
 * (Redis 7.0).  Returns 0 with *host (into the reply) and *port, 1 when
 * the Sentinel knows no master of that name (a nil reply), -1 for any
 * other reply, an error included.
 */
int dify_redis_sentinel_master(const redisReply *r, const char **host,
    size_t *host_len, unsigned *port);

/* ROLE: 1 when its first element is "master", 0 otherwise */
int dify_redis_role_master(const redisReply *r);

/*
 * The payload of a "+switch-master" message: "<name> <old-ip> <old-port>
 * <new-ip> <new-port>".  Returns 0 with the new address (into s) when
 * it is about the master "name", -1 otherwise.
 */
int dify_redis_switch_master(const char *s, size_t len, const char *name,
    size_t name_len, const char **host, size_t *host_len, unsigned *port);


#endif /* _DIFY_REDIS_H_INCLUDED_ */
