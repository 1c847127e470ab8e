/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * What Redis Cluster needs that needs no nginx: the hash slot of a key
 * (CRC16 XMODEM of its hash tag), the redirections MOVED and ASK, and
 * the slot map of a CLUSTER SLOTS reply.
 * Pure logic: no nginx header is included here (hiredis types only).
 */


#ifndef _DIFY_CLUSTER_H_INCLUDED_
#define _DIFY_CLUSTER_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>


#define DIFY_CLUSTER_SLOTS  16384


/* CRC16 XMODEM: polynomial 0x1021, initial 0, no reflection, as Redis's */
uint16_t dify_cluster_crc16(const char *buf, size_t len);

/*
 * The slot of a key: the bytes between the first '{' and the first '}'
 * after it when there are any, otherwise the whole key (keyHashSlot()).
 */
unsigned dify_cluster_keyslot(const char *key, size_t len);


typedef enum {
    DIFY_CLUSTER_REDIRECT_NONE = 0,     /* not a redirection */
    DIFY_CLUSTER_REDIRECT_MOVED,
    DIFY_CLUSTER_REDIRECT_ASK
} dify_cluster_redirect_e;


typedef struct {
    dify_cluster_redirect_e  kind;
    unsigned                 slot;
    const char              *host;      /* into the input; may be empty */
    size_t                   host_len;  /* 0: "the host you asked" */
    unsigned                 port;
} dify_cluster_redirect_t;


/*
 * "MOVED <slot> <endpoint>:<port>" or "ASK ...", an error reply's text
 * (what follows '-').  The endpoint is an IPv4 or IPv6 address (bare,
 * the port follows the last ':'), a host name, or empty.  Returns the
 * kind, NONE for anything else or when malformed.
 */
dify_cluster_redirect_e dify_cluster_parse_redirect(const char *str,
    size_t len, dify_cluster_redirect_t *rd);


/* a range of slots and its primary, as CLUSTER SLOTS reports them */
typedef struct {
    unsigned                 start;
    unsigned                 end;       /* included */
    const char              *host;      /* into the reply; may be empty */
    size_t                   host_len;  /* 0: "the host you asked" */
    unsigned                 port;
} dify_cluster_range_t;


/*
 * The ranges of a CLUSTER SLOTS reply, up to n of them, in *ranges.
 * A range whose primary's endpoint is unknown ("?", a hostname
 * preferred but not set) is left out.  Returns the number of ranges,
 * or -1 when the reply is not a CLUSTER SLOTS reply (an error, a wrong
 * shape, a slot or port out of range).
 */
int dify_cluster_parse_slots(const redisReply *reply,
    dify_cluster_range_t *ranges, size_t n);


#endif /* _DIFY_CLUSTER_H_INCLUDED_ */
