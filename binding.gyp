{
  "targets": [
    {
      "target_name": "netboot_sendfile",
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "conditions": [
        ["OS=='linux'", { "sources": ["native/sendfile/sendfile.cc"] }]
      ]
    },
    {
      "target_name": "netboot_neigh",
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "conditions": [
        ["OS=='linux'", { "sources": ["native/neigh/neigh.cc"] }]
      ]
    },
    {
      "target_name": "netboot_pread",
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "conditions": [
        ["OS=='linux'", { "sources": ["native/pread/pread.cc"] }]
      ]
    },
    {
      "target_name": "netboot-ra-io",
      "type": "executable",
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "conditions": [
        ["OS=='linux'", { "sources": ["native/ra-io/netboot-ra-io.c"] }]
      ]
    }
  ]
}
