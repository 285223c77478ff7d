{
  "targets": [
    {
      "target_name": "ovm_native",
      "sources": [
        "src/binding.c",
        "src/vm.c", "src/vcpu.c", "src/serial.c", "src/i8042.c", "src/snapshot.c",
        "src/arch/x86_64/boot.c", "src/arch/x86_64/cpu.c", "src/arch/x86_64/mptable.c",
        "src/err.c", "src/buf.c", "src/mem.c", "src/bus.c",
        "src/pci.c", "src/virtio_pci.c", "src/virtqueue.c", "src/virtio_blk.c",
        "src/qcow2.c", "src/disk.c"
      ],
      "include_dirs": ["include"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
      "ldflags": ["-pthread"],
      "conditions": [["OS!='linux'", {"type": "none"}]]
    }
  ]
}
