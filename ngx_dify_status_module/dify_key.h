/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Hashing of API keys and of the limiter's script.
 * Pure logic: no nginx header is included here.
 */


#ifndef _DIFY_KEY_H_INCLUDED_
#define _DIFY_KEY_H_INCLUDED_


#include <stddef.h>


#define DIFY_KEY_HASH_LEN  64       /* hex digits of a SHA-256 */
#define DIFY_SHA1_HEX_LEN  40


/*
 * Lowercase hex SHA-256 of the raw token; hex gets no terminating NUL.
 * Both return 0, or -1 when OpenSSL fails (out of memory).
 */
int dify_key_hash(const unsigned char *token, size_t len, char *hex);

/* frees what dify_key_hash() keeps (at a process's exit) */
void dify_key_cleanup(void);

/* lowercase hex SHA-1, as Redis names a script for EVALSHA */
int dify_sha1_hex(const unsigned char *data, size_t len, char *hex);


#endif /* _DIFY_KEY_H_INCLUDED_ */
