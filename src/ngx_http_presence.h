
/*
 * Copyright (C) The presence module authors
 *
 * Declarations shared by the files of ngx_http_presence_module.
 */


#ifndef _NGX_HTTP_PRESENCE_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_auth.h"


/* request bodies larger than this are 413 */
#define NGX_HTTP_PRESENCE_BODY_MAX      4096

/* GET /v1/status?ids= takes at most this many ids */
#define NGX_HTTP_PRESENCE_IDS_MAX       1000


/* what a location's handler serves */
#define NGX_HTTP_PRESENCE_HEARTBEAT     1
#define NGX_HTTP_PRESENCE_STATUS        2
#define NGX_HTTP_PRESENCE_METRICS       3


typedef struct {
    ngx_shm_zone_t             *shm_zone;     /* the presence table */
    ngx_event_t                 sweeper;
    ngx_msec_t                  sweep_interval;
} ngx_http_presence_main_conf_t;


typedef struct {
    ngx_uint_t                  endpoint;     /* not inherited */

    ngx_str_t                   secret;       /* HS256 key, data NULL: none */
    ngx_int_t                   identity;     /* variable index, or -1 */
    ngx_str_t                   identity_name;

    ngx_msec_t                  timeout;      /* heartbeat timeout */
} ngx_http_presence_loc_conf_t;


ngx_int_t ngx_http_presence_handler(ngx_http_request_t *r);

ngx_presence_table_t *ngx_http_presence_table(ngx_http_request_t *r);

ngx_int_t ngx_http_presence_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
ngx_int_t ngx_http_presence_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);


extern ngx_module_t  ngx_http_presence_module;


#endif /* _NGX_HTTP_PRESENCE_H_INCLUDED_ */
