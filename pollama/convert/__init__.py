"""Turning model files into the GGUF layers the store keeps: conversion and quantization."""
