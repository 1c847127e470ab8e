/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Hashing of API keys and of the limiter's script.
 * Pure logic: no nginx header is included here.
 */


#include <string.h>
#include <openssl/evp.h>

#include "dify_key.h"


static int dify_digest_hex(const EVP_MD *md, EVP_MD_CTX *ctx,
    const unsigned char *data, size_t len, char *hex, size_t hex_len);


/*
 * Every checked request hashes its token: the digest is fetched from
 * OpenSSL's provider once per process (OpenSSL 3 fetches it again on
 * every EVP_Digest() given EVP_sha256()) and its context is reused.
 */
static EVP_MD      *dify_key_md;
static EVP_MD_CTX  *dify_key_ctx;


int
dify_key_hash(const unsigned char *token, size_t len, char *hex)
{
    if (dify_key_ctx == NULL) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        dify_key_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#endif
        dify_key_ctx = EVP_MD_CTX_new();
    }

    return dify_digest_hex(dify_key_md ? dify_key_md : EVP_sha256(),
                           dify_key_ctx, token, len, hex, DIFY_KEY_HASH_LEN);
}


void
dify_key_cleanup(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(dify_key_md);
#endif
    EVP_MD_CTX_free(dify_key_ctx);

    dify_key_md = NULL;
    dify_key_ctx = NULL;
}


int
dify_sha1_hex(const unsigned char *data, size_t len, char *hex)
{
    return dify_digest_hex(EVP_sha1(), NULL, data, len, hex,
                           DIFY_SHA1_HEX_LEN);
}


/*
 * With a context of the caller's, or a context of its own (ctx NULL);
 * fails only when OpenSSL cannot allocate.
 */

static int
dify_digest_hex(const EVP_MD *md, EVP_MD_CTX *ctx, const unsigned char *data,
    size_t len, char *hex, size_t hex_len)
{
    size_t              i;
    unsigned int        n;
    unsigned char       digest[EVP_MAX_MD_SIZE];
    static const char   digits[] = "0123456789abcdef";

    if (len == 0) {
        /* data may be NULL */
        data = (const unsigned char *) "";
    }

    if (ctx == NULL) {
        if (EVP_Digest(data, len, digest, &n, md, NULL) != 1) {
            return -1;
        }

    } else if (EVP_DigestInit_ex(ctx, md, NULL) != 1
               || EVP_DigestUpdate(ctx, data, len) != 1
               || EVP_DigestFinal_ex(ctx, digest, &n) != 1)
    {
        return -1;
    }

    if ((size_t) n * 2 != hex_len) {
        return -1;
    }

    for (i = 0; i < n; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 0xf];
    }

    return 0;
}
