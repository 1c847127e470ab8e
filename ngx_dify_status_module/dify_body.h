/*
 * Copyright (C) The ngx_dify_status_module authors
 *
 * Validation of the batch-status JSON body: a scan of its bytes, then
 * jansson.  Pure logic: no nginx header is included here.
 */


#ifndef _DIFY_BODY_H_INCLUDED_
#define _DIFY_BODY_H_INCLUDED_


#include <stddef.h>


#define DIFY_BODY_MESSAGE_LEN  192

/*
 * Nesting levels, the root's included: a batch body has 2.  orjson >= 3.9
 * refuses more than 1024, CPython's json fails near 1000, jansson stops
 * at 2048; the gateway refuses past 64.  At most 64: the scan keeps one
 * bit per level.
 */
#define DIFY_BODY_MAX_DEPTH  64

/*
 * JSON values a body may hold beside the root object, the document_ids
 * array and its max_documents ids: room for unknown fields.
 */
#define DIFY_BODY_EXTRA_VALUES  64


typedef struct {
    size_t      max_documents;      /* 0: no cap */
    unsigned    ids_any:1;          /* 0: every id must be a UUID */
    unsigned    reject_duplicates:1;
    unsigned    no_fast:1;          /* tests: the scan and jansson always */
} dify_body_conf_t;


typedef enum {
    DIFY_BODY_OK = 0,
    DIFY_BODY_BAD_REQUEST,          /* row 6: not a JSON object */
    DIFY_BODY_INVALID_PARAM,        /* row 7: message says which field */
    DIFY_BODY_TOO_MANY_VALUES,      /* row 5: message says how many */
    DIFY_BODY_NOMEM
} dify_body_rc_e;


typedef struct {
    size_t      documents;          /* number of document_ids when OK */
    unsigned    fast:1;             /* decided in the common form's pass */
    char        message[DIFY_BODY_MESSAGE_LEN];
} dify_body_result_t;


/*
 * The body every client sends, {"document_ids": ["...", ...]} with
 * whitespace and printable ASCII ids without escapes, is checked in one
 * pass that builds nothing, with the answers below; any other body:
 * First, one pass over the bytes that builds nothing: a leading UTF-8
 * byte order mark (orjson refuses it) and nesting deeper than
 * DIFY_BODY_MAX_DEPTH are BAD_REQUEST; more JSON values than
 * max_documents + 2 + DIFY_BODY_EXTRA_VALUES (no limit when
 * max_documents is 0) is TOO_MANY_VALUES, with the sentence for the
 * client; the first limit reached in the body answers.  Then jansson:
 * Row 6: valid UTF-8 JSON, no duplicate keys at any depth, an object.
 * Row 7: "document_ids" present, an array of strings, at most
 * max_documents items, each a UUID unless ids_any, no two equal
 * (UUIDs compared case-insensitively) when reject_duplicates.
 * The jansson tree is freed before returning, on every path.
 */
dify_body_rc_e dify_body_validate(const unsigned char *data, size_t len,
    const dify_body_conf_t *conf, dify_body_result_t *res);


#endif /* _DIFY_BODY_H_INCLUDED_ */
