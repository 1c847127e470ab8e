/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Hashing of API keys and of the limiter's script.
 * Pure logic: no nginx header is included here.
 */


#include <string.h>
#include <openssl/evp.h>

#include "dify_key.h"


static int dify_digest_hex(const EVP_MD *md, const unsigned char *data,
    size_t len, char *hex, size_t hex_len);


int
dify_key_hash(const unsigned char *token, size_t len, char *hex)
{
    return dify_digest_hex(EVP_sha256(), token, len, hex, DIFY_KEY_HASH_LEN);
}


int
dify_sha1_hex(const unsigned char *data, size_t len, char *hex)
{
    return dify_digest_hex(EVP_sha1(), data, len, hex, DIFY_SHA1_HEX_LEN);
}


/* EVP_Digest() fails only when OpenSSL cannot allocate its context */

static int
dify_digest_hex(const EVP_MD *md, const unsigned char *data, size_t len,
    char *hex, size_t hex_len)
{
    size_t              i;
    unsigned int        n;
    unsigned char       digest[EVP_MAX_MD_SIZE];
    static const char   digits[] = "0123456789abcdef";

    if (len == 0) {
        /* data may be NULL */
        data = (const unsigned char *) "";
    }

    if (EVP_Digest(data, len, digest, &n, md, NULL) != 1
        || (size_t) n * 2 != hex_len)
    {
        return -1;
    }

    for (i = 0; i < n; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 0xf];
    }

    return 0;
}
